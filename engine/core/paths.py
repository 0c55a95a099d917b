"""Where the project's own files are: the demo workspace's sources and the default configurations."""

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEMO_DIR = PROJECT_DIR / "demo"
CONFIGS_DIR = PROJECT_DIR / "configs"
