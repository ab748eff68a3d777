"""Fine-tuning of editors with DeepSpeed ZeRO: run config, data, objectives, the recipe.

The recipe (`policies.training.recipe`) is launched by `deepspeed`/`torchrun` (or alone on CPU)
through `editloop train CONFIG`; `loop.training.jobs` prepares its inputs and publishes its output.
"""
