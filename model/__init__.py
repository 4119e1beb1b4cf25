"""Perceiver AR model, sampler and training pieces (Flax NNX).

Public API (import from the submodules; this package imports nothing eagerly):
  model.config        Config, PRESETS ("tiny", "cpu", "paper"), get_config(name, **overrides)
  model.perceiver_ar  PerceiverAR(config, rngs=nnx.Rngs(seed)), DecodeCache, count_params
  model.sampler       sample(model, prompts, SampleOptions(max_new_tokens=..., ...), seed=...),
                      SampleOptions, StepInfo, StopSampling,
                      prompt_window(config, num_latents=None, refill_headroom=None)
  model.losses        loss_fn(model, tokens, *, rng, deterministic), cross_entropy_with_z_loss
  model.train_step    create_train_state, make_train_step, make_eval_step, train_step (NNX)
  model.vocab         PAD_ID, EOS_ID, SOS_ID, VOCAB_SIZE, TIME_SHIFT_FIRST_ID, ...
"""
