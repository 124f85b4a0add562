"""MovieChat training framework: long-video language models with streaming memory.

The package is a house of rooms, one per job or layer (docs/architecture.md). Lower rooms never import
the job rooms built on them:

    common, text, config, memory   low shared pieces: errors, atomic writes, registry, prompt, settings
    data, models                   feature stores and datasets; the MovieChat model and its parts
    runs                           a run on disk: folder, checkpoints, train state, loading, export
    training, answering, scoring, tuning, prepare
                                   the jobs: train; answer questions; score answers; sweep and search the
                                   memory; prepare inputs (features, releases, generated sets)

One command runs them all: ``moviechat <verb>`` (``python -m moviechat --help``).
"""
