"""LLaMA-Factory's column and tag attributes (`DatasetAttr`), and each recipe format's default layout.

The format names come from `lfw.recipe.vocabulary`; `assets/dataset_info/formats.json` gives each of them its
columns, tag style and `ranking` flag, in LLaMA-Factory's own terms, so they can be registered as they are.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# LLaMA-Factory's column attributes (DatasetAttr) and tag attributes, in its own order.
COLUMN_NAMES = (
    "prompt", "query", "response", "history", "messages", "system", "tools",
    "images", "videos", "audios", "chosen", "rejected", "kto_tag",
)  # fmt: skip
TAG_NAMES = (
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
)
MEDIA = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}
# Columns a row may leave out; the others (prompt, response, messages, chosen, rejected, kto_tag) are the data.
OPTIONAL_COLUMNS = ("query", "history", "system", "tools", *MEDIA)
# LLaMA-Factory's columns when a dataset_info entry has no "columns" block (DatasetAttr's defaults).
LF_DEFAULT_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}

# The recipe formats' default layouts and the two message tag styles: data, shipped in the package.
FORMAT_DEFAULTS: dict[str, Any] = json.loads(
    (resources.files("lfw") / "assets" / "dataset_info" / "formats.json").read_text(encoding="utf-8")
)
SHAREGPT_TAGS: dict[str, str | None] = FORMAT_DEFAULTS["tag_styles"]["from_value"]  # also LLaMA-Factory's defaults
ROLE_CONTENT_TAGS: dict[str, str | None] = FORMAT_DEFAULTS["tag_styles"]["role_content"]
