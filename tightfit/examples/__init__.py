"""Built-in examples that run offline: models and data that ship with installed packages."""
