"""What every subcommand starts with: the config that -c names, and logging set up from it."""

import argparse
import logging
import sys

from fs_crm.config import Config, load_config
from fs_crm.logformat import formatter


def setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    # urllib3 logs full URLs at DEBUG; they carry no key (it travels in a header) but are noise.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def configure(args: argparse.Namespace) -> Config:
    """Load the config file -c names and set up logging from it (--log-level wins over its [logging] level)."""
    config = load_config(args.config)
    setup_logging(args.log_level or config.log_level, config.log_format)
    return config
