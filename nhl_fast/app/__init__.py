"""The `nhl-fast` command: train, eval, encode, compare, demo, bench (entry point: nhl_fast.app.cli:main).

Built on the library (`import nhl_fast`, torch and numpy only). Its own dependencies (tqdm,
safetensors, scikit-learn, matplotlib) are the `app` extra: pip install 'nhl-fast[app]'.
Nothing is imported here, so `import nhl_fast.app.<module>` loads only what that module needs.
"""
