"""Which LLM versions may start a training job, read from a version's tags. In the lifecycle because they are rules
of a version's status, shared by the retraining form (ui) and the launch (training), both above it."""

from __future__ import annotations


def offered_as_start(tags: dict) -> bool:
    """Whether a version with these tags may start a training job: neither archived nor failed."""
    return tags.get("status") not in ("archived", "failed")


def starts_sft(tags: dict) -> bool:
    """Whether SFT's 'latest' may start from a version with these tags: a CPT version offered as a start."""
    return tags.get("training") == "cpt" and offered_as_start(tags)
