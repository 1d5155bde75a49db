import pytest

from medtune.errors import ConfigError
from medtune.recipe import load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_recipe_and_dotted_overrides(tmp_path):
    p = write(tmp_path, "model: m\ntrain:\n  learning_rate: 1.0e-4\n  lora_r: 4\n")
    r = load_recipe(p, ["train.learning_rate=2e-4", "train.target_modules=[q_proj, v_proj]", "seed=7",
                        "chat.generation.temperature=0.5", "train.packing=true"])
    assert r.train.learning_rate == pytest.approx(2e-4)
    assert r.train.lora_r == 4
    assert r.train.target_modules == ["q_proj", "v_proj"]
    assert r.seed == 7 and r.chat.generation.temperature == 0.5 and r.train.packing is True
    assert r.model == "m"


def test_numeric_looking_string_field(tmp_path):
    r = load_recipe(None, ["model=12345"])
    assert r.model == "12345"


def test_unknown_key_is_named_with_suggestion(tmp_path):
    p = write(tmp_path, "train:\n  learnin_rate: 1.0e-4\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "train.learnin_rate" in msg and "learning_rate" in msg and str(p) in msg


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, ["train.lora_r=eight"])
    assert "train.lora_r" in str(e.value) and "eight" in str(e.value)


def test_unknown_top_level_key_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'.*did you mean 'train'"):
        load_recipe(None, ["trian.max_steps=3"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(write(tmp_path, "train: [unclosed\n"))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_recipe(None, ["train.lora_r"])


@pytest.mark.parametrize("raw", ["off", "no", "yes", "on", "1e-4", "null"])
def test_set_reaches_text_fields_as_typed(raw):
    from medtune.recipe import parse_override

    assert parse_override(f"model={raw}")[1] == raw  # a str field: the value as typed
    assert parse_override(f"chat.safety.disclaimer={raw}")[1] == raw  # a Literal of strings
    assert load_recipe(None, [f"model={raw}"]).model == raw


def test_set_off_reaches_a_literal_and_null_an_optional_text_field():
    r = load_recipe(None, ["chat.safety.disclaimer=off", "chat.model=null", "train.packing=on", "train.learning_rate=1e-4"])
    assert r.chat.safety.disclaimer == "off" and r.chat.model is None
    assert r.train.packing is True and r.train.learning_rate == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="disclaimer"):
        load_recipe(None, ["chat.safety.disclaimer=yes"])
