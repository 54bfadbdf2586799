"""The run configuration, in three files: schema.py (the dataclass tree and its enums: the single source of truth),
ranges.py (the allowed values of every numeric key) and load.py (YAML / JSON files and --section.key overrides)."""
