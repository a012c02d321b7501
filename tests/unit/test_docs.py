"""The README's reference sections are generated from the code and must match it."""
from hermes_infra import docs
from hermes_infra.settings.schema import HostSettings


def test_readme_reference_is_up_to_date():
    text = docs.README.read_text()
    assert docs.render_readme(text) == text, "run `python3 -m hermes_infra.docs` and commit README.md"


def test_every_setting_has_a_docstring_and_appears_in_the_reference():
    reference = docs.settings_markdown()
    pending = [HostSettings]
    seen = set()
    while pending:
        model = pending.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            assert f"| `{name}` |" in reference
            sub = docs._model_of(field.annotation)
            if sub is not None:
                pending.append(sub)
