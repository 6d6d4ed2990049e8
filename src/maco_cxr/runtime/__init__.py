"""The run machinery shared by pre-training (:mod:`maco_cxr.pretraining`) and fine-tuning
(:mod:`maco_cxr.tasks.finetune`): the one run skeleton (:mod:`.loop`: :func:`~.loop.run_training`
and the :class:`~.loop.RunHooks` a kind of training supplies), checkpoints (:mod:`.checkpoint`),
process groups and collectives (:mod:`.distributed`), RNG state (:mod:`.rng`), the metrics log
(:mod:`.metrics_log`), optimizers (:mod:`.optim`) and learning-rate schedules (:mod:`.schedules`).

It knows nothing of MaCo or of any task. Nothing is imported here, so that reading the rank
environment (:func:`~.distributed.world_info_from_env`) does not load the loop.
"""
