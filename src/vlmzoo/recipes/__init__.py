"""Recipes: whole jobs assembled from the rooms below, for the command line and for scripts.

- :mod:`~vlmzoo.recipes.shapes`: the shapes VQA task, a VLM sized for it, training on it;
- :mod:`~vlmzoo.recipes.train`: the ``vlmzoo train`` job (:class:`TrainJob`, :func:`train`), the one
  orchestration of a run (the demo is this job with its defaults);
- :mod:`~vlmzoo.recipes.demo`: ``vlmzoo demo`` (:func:`run_demo`);
- :mod:`~vlmzoo.recipes.ablation`: ``vlmzoo ablate`` (:func:`run_ablation`);
- :mod:`~vlmzoo.recipes.plots`: loss curves;
- :mod:`~vlmzoo.recipes.zoo`: ``vlmzoo info``'s text and ``vlmzoo zoo``'s table.

The command line (:mod:`vlmzoo.cli`) parses arguments and calls these; nothing here parses them.
"""
