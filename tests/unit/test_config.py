"""params.yaml is the one source of every setting: it loads, and the schema repeats none of its values."""

import pydantic
import pytest
from pydantic import BaseModel

from components import config
from components.config import PARAMS_FILE, Params, default_params, load_params

# Fields optional by nature, not defaults of a params.yaml value: an open side of a range, a change
# measured one way only, the groups of checks and the sign-off a (per-model) gate policy leaves out
# (a policy written before sign-off existed, as recorded in a run's params, still reads).
OPTIONAL = {
    "Bound": {"lower", "upper"},
    "ChangeThreshold": {"absolute", "relative"},
    "GatePolicy": {"values", "changes", "subgroup_floors", "require_approval", "allow_self_approval"},
}


def schema_models() -> list[type[BaseModel]]:
    return [m for m in vars(config).values() if isinstance(m, type) and issubclass(m, config._Section) and m is not config._Section]


def test_the_project_params_load():
    assert default_params() == load_params(PARAMS_FILE)
    assert default_params().evaluate.calibration_bins == 10 and default_params().train.model.depth == 10


@pytest.mark.parametrize("model", schema_models(), ids=lambda m: m.__name__)
def test_the_schema_has_no_defaults(model):
    defaulted = {name for name, field in model.model_fields.items() if not field.is_required()}
    assert defaulted <= OPTIONAL.get(model.__name__, set()), f"{model.__name__}: defaults for {defaulted}; put the values in params.yaml"


def test_default_params_merge_overrides_by_section():
    params = default_params(train={"model": {"width": 4}}, validate={"severity": {"row_count": "warning"}})
    assert params.train.model.width == 4 and params.train.model.depth == default_params().train.model.depth
    assert params.validate_.severity["row_count"] == "warning" and params.validate_.severity["schema"] == "blocking"
    with pytest.raises(pydantic.ValidationError):
        default_params(train={"widht": 4})


@pytest.mark.parametrize(("path", "key"), [(("evaluate",), "calibration_bins"), (("validate", "severity"), "spacing")])
def test_a_missing_key_is_refused(path, key):
    raw = default_params().model_dump(mode="json", by_alias=True)
    section = raw
    for name in path:
        section = section[name]
    del section[key]
    with pytest.raises(pydantic.ValidationError, match=key):
        Params.model_validate(raw)
