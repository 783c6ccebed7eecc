"""Load recipes from YAML (shipped names or files), apply `--set a.b=value` overrides, validate with a clear error."""

from __future__ import annotations

import difflib
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vitkit.config.schema import Recipe
from vitkit.errors import RecipeError

RECIPE_PACKAGE = "vitkit.config.recipes"


def shipped_recipes() -> dict[str, Path]:
    """Names of the recipes that ship with vitkit, mapped to their YAML files."""
    folder = resources.files(RECIPE_PACKAGE)
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


# fields renamed since recipes were first written: (section, old name) -> new name. Old recipe files and run
# folders keep working; the meaning is unchanged.
RENAMED = {("train", "max_steps"): "max_updates"}  # it always counted optimizer updates, not (micro-batch) steps


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    for (section, old), new in RENAMED.items():
        fields = data.get(section)
        if isinstance(fields, dict) and old in fields:
            value = fields.pop(old)
            fields.setdefault(new, value)
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: plain YAML keeps the last
    value, so a field pasted twice would quietly override what the reader sees first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"'{key}' is given twice (lines {first_line[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot be read as a recipe ({exc}). Pass a YAML text file.") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc}). Fix the syntax at the line shown.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}.")
    return _migrate(data)


def _resolve_path(name_or_path: str) -> Path:
    """The YAML file behind a shipped recipe name, a recipe file or a run folder."""
    path = Path(name_or_path)
    if path.is_dir():  # a run folder: the recipe it was trained with
        if not (path / "recipe.yaml").is_file():
            raise RecipeError(
                f"{path} is a folder with no recipe.yaml. Pass a recipe .yaml file, a run folder written by "
                "vitkit train, or a shipped recipe name."
            )
        return path / "recipe.yaml"
    if path.suffix in (".yaml", ".yml") or path.exists() or len(path.parts) > 1:
        if not path.exists():
            raise RecipeError(f"recipe file {path} does not exist. Check the path, or use a shipped recipe name.")
        return path
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    hint = difflib.get_close_matches(name_or_path, shipped, n=1)
    suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
    raise RecipeError(
        f"unknown recipe '{name_or_path}'.{suggestion} Shipped recipes: {', '.join(sorted(shipped))}; "
        "or pass a path to a .yaml file."
    )


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`, section by section."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(name_or_path: str, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """Read a recipe and the chain of `base:` recipes it extends, without validating."""
    path = _resolve_path(name_or_path)
    if path.resolve() in _seen:
        raise RecipeError(f"{path}: recipe inheritance loops back on itself through 'base'.")
    data = _read_yaml(path)
    base_name = data.pop("base", None)
    if base_name is not None:
        base_data, _ = load_raw(str(base_name), (*_seen, path.resolve()))
        data = deep_merge(base_data, data)
    return data, path


def _annotation_at(dotted: list[str]) -> Any:
    """The type of the recipe field at `dotted` (a section's model, or a value's type); None past a field that is
    not a section, or at a name the recipe does not have."""
    current: Any = Recipe
    for key in dotted:
        field = current.model_fields.get(key) if isinstance(current, type) and issubclass(current, BaseModel) else None
        if field is None:
            return None
        current = field.annotation
    return current


def _section_fields(section_path: list[str]) -> list[str]:
    """Field names of the section at `section_path` (the recipe's sections for []); none below a value."""
    section = _annotation_at(section_path)
    return list(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []


def _known_fields(dotted: list[str]) -> list[str]:
    """Field names valid at the position of the last key in `dotted`, for suggestions."""
    return _section_fields(dotted[:-1])


def _nearest_field(dotted: list[str]) -> str | None:
    """The valid `section.field` nearest to the misspelt last key of `dotted`: a close name in its own section, else
    the same (or a close) name in another section (train.epochs is schedule.epochs)."""
    valid = _known_fields(dotted)
    hint = difflib.get_close_matches(dotted[-1], valid, n=1)
    if hint:
        return ".".join([*dotted[:-1], hint[0]])
    if len(dotted) != 2:
        return None
    elsewhere = [f"{section}.{name}" for section in _section_fields([]) for name in _section_fields([section])]
    same = [f for f in elsewhere if f.endswith(f".{dotted[-1]}")]
    close = difflib.get_close_matches(dotted[-1], [f.split(".")[1] for f in elsewhere], n=1)
    return same[0] if same else next((f for f in elsewhere if close and f.endswith(f".{close[0]}")), None)


def _check_keys(item: str, keys: list[str]) -> None:
    """Name the first key of `section.field` that the recipe does not have (a misspelt section included), with
    the nearest valid name."""
    for depth, key in enumerate(keys):
        valid = _known_fields(keys[: depth + 1])
        if depth and not valid:  # below a field that holds a value or a mapping (model.kwargs), not a section
            parent, value = ".".join(keys[:depth]), item.split("=", 1)[1]
            if typing.get_origin(_annotation_at(keys[:depth])) is not dict:
                raise RecipeError(f"override '{item}': {parent} holds a value, not fields: '{parent}=VALUE'.")
            raise RecipeError(
                f"override '{item}': {parent} is set as a whole, e.g. '{parent}={{{key}: {value}}}' (this replaces "
                f"the recipe's {parent}: repeat the keys it should keep)."
            )
        if key not in valid:
            hint = _nearest_field(keys[: depth + 1])
            suggestion = f" Did you mean '{hint}'?" if hint else ""
            where = f"{'.'.join(keys[:depth])} has no field" if depth else "the recipe has no section"
            raise RecipeError(f"override '{item}': {where} '{key}'.{suggestion}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.field=value` overrides; values are parsed as YAML (so 1e-3, true, null, [1, 2] work)."""
    out = deep_merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override '{item}' is not of the form section.field=value (e.g. optim.lr=1e-3).")
        key, raw_value = item.split("=", 1)
        keys = key.strip().split(".")
        if len(keys) == 2 and (keys[0], keys[1]) in RENAMED:
            keys[1] = RENAMED[keys[0], keys[1]]
        _check_keys(item, keys)
        if not raw_value.strip():  # often a shell variable that was empty: unsetting takes an explicit null
            raise RecipeError(f"override '{item}' has no value. Give one, or {key.strip()}=null to unset the field.")
        try:
            value = yaml.safe_load(raw_value)
        except yaml.YAMLError:
            value = raw_value
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return out


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"{origin}: the recipe is not valid:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in err["loc"][:-1])
            dotted = [str(p) for p in err["loc"]]
            hint = _nearest_field(dotted)
            shown = hint.split(".", 1)[1] if hint and hint.startswith(f"{section}.") and section else hint
            valid = f" Valid fields: {', '.join(_known_fields(dotted))}."
            suggestion = f" Did you mean '{shown}'?" if hint else valid
            lines.append(f"  - {loc}: unknown field in section '{section or 'recipe'}'.{suggestion}")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            # a check of vitkit's own says what to do: its text without pydantic's "Value error, " in front
            message = str(err["ctx"]["error"]) if err["type"] == "value_error" and "ctx" in err else err["msg"]
            lines.append(f"  - {loc or 'recipe'}: {message}{shown}")
    return "\n".join(lines)


def load_recipe(name_or_path: str, overrides: list[str] | None = None, source: str | None = None) -> Recipe:
    """Load, override and validate a recipe; errors name the field, the value and the file."""
    data, path = load_raw(name_or_path)
    data = apply_overrides(data, overrides or [])
    if source is not None:
        data.setdefault("data", {})["source"] = source
    origin = str(path) + (f" with overrides {overrides}" if overrides else "")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, origin)) from None


def override_recipe(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of a resolved `recipe` with `overrides` applied and validated, as `load_recipe` does for a file."""
    try:
        return Recipe.model_validate(apply_overrides(recipe.model_dump(mode="json"), overrides))
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, f"the recipe with overrides {overrides}")) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_from_yaml_file(path: Path) -> Recipe:
    """Load an already-resolved recipe (e.g. a run folder's recipe.yaml)."""
    try:
        return Recipe.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, str(path))) from None
