"""Benchmarks of autoenc, outside the installed package: run from the repository root as
``python -m benchmarks {core,stacking,spread} [options]`` (docs/performance.md shows what each measures)."""
