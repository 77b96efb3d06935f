"""Deprecated alias of :mod:`trust_region.interfaces` (renamed: "protocol" means the LLM team's text
handoff elsewhere). Import from ``trust_region.interfaces``; this module will be removed."""

from trust_region.interfaces import *  # noqa: F401,F403
from trust_region.interfaces import __all__  # noqa: F401
