"""Any YAML document given as a recipe gives a clear error or a rendering, never a traceback."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfw.infra.errors import UserError
from lfw.launch.target import Target
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import render
from tests.conftest import minimal_recipe

KEYS = [
    "name",
    "model",
    "path",
    "template",
    "method",
    "type",
    "training",
    "stages",
    "stage",
    "datasets",
    "format",
    "hardware",
    "gpus",
    "deepspeed",
    "llamafactory",
    "extends",
    "lora",
    "rank",
    "x",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.sampled_from(["sft", "dpo", "lora", "qlora", "alpaca", "auto", "z3"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=25,
)


def attempt(path: Path) -> None:
    try:
        loaded = load_recipe(str(path))
        render(loaded, Target("cpu", 1), Path("/RUN"))
    except UserError as err:
        assert err.render().strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_arbitrary_documents(document, tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(document))
    attempt(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(
        [
            "name",
            "model",
            "method",
            "training",
            "stages",
            "hardware",
            "tracking",
            "llamafactory",
            "output_dir",
        ]
    ),
    value=documents,
)
def test_valid_recipe_with_one_block_replaced(key, value, tmp_path):
    recipe = minimal_recipe()
    recipe[key] = value
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(recipe))
    attempt(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_arbitrary_text(text, tmp_path):
    path = tmp_path / "r.yml"
    path.write_text(text)
    attempt(path)
