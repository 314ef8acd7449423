"""New study: workload × optimizers × grid × seeds, validated before anything is queued."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
import streamlit as st

from approximant.app import access, actions, forms, presets
from approximant.app.labels import human_problems
from approximant.app.services import get_services
from approximant.app.text import plain, plain_lines
from approximant.engine.errors import SpecError
from approximant.engine.optimizers import OPTIMIZERS
from approximant.engine.specs import StudySpec, parse_study, parse_study_toml
from approximant.engine.workloads import WORKLOADS

DEFAULT_OPTIMIZERS = ["sgd", "adamw", "muon"]


def _setting_input(key: str, info, prefix: str) -> Any:
    kind = forms.field_kind(info)
    label = key.replace("_", " ")
    if kind is bool:
        return st.checkbox(label, value=bool(info.default), key=f"{prefix}.{key}",
                           help=info.description)
    if kind is int:
        return st.number_input(label, value=int(info.default), step=1, key=f"{prefix}.{key}",
                               help=info.description)
    if kind is float:
        return st.number_input(label, value=float(info.default), format="%g",
                               key=f"{prefix}.{key}", help=info.description)
    return st.text_input(label, value=str(info.default), key=f"{prefix}.{key}",
                         help=info.description)


def _build_spec_dict() -> dict[str, Any]:
    """Draw the form and return the spec it describes (SpecError for unparsable fields)."""
    problems: list[str] = []
    name = st.text_input(
        "Study name", value=f"study {datetime.now(UTC):%Y-%m-%d %H:%M}", key="name"
    )
    wl_names = sorted(WORKLOADS)
    wl_name = st.selectbox(
        "Workload", wl_names, index=wl_names.index("digits_mlp") if "digits_mlp" in wl_names
        else 0, format_func=lambda n: f"{WORKLOADS[n].title} ({n})", key="workload",
    )
    wl = WORKLOADS[wl_name]
    st.caption(wl.description)
    settings = {}
    with st.expander("Workload settings"):
        fields = wl.settings.model_fields
        cols = st.columns(3)
        for i, (key, info) in enumerate(fields.items()):
            with cols[i % 3]:
                value = _setting_input(key, info, f"wl.{wl_name}")
            if value != info.default:
                settings[key] = value

    chosen = st.multiselect(
        "Optimizers", sorted(OPTIMIZERS),
        default=[n for n in DEFAULT_OPTIMIZERS if n in OPTIMIZERS],
        format_func=lambda n: OPTIMIZERS[n].title, key="optimizers",
        help="Each optimizer takes a grid: comma-separated values per hyper-parameter.",
    )
    entries = []
    for i, opt in enumerate(chosen):
        d = OPTIMIZERS[opt]
        fields = d.params.model_fields
        with st.expander(f"{d.title} — grid", expanded=True):
            st.caption(d.description)
            texts = {}
            cols = st.columns(3)
            for j, (key, info) in enumerate(fields.items()):
                with cols[j % 3]:
                    texts[key] = st.text_input(
                        key.replace("_", " ") + (" (list)" if key == "lr" else ""),
                        value=forms.default_text(info), key=f"opt.{opt}.{key}",
                        help=info.description,
                    )
        try:
            entries.append(forms.optimizer_entry(opt, texts, fields, i))
        except SpecError as err:
            problems.append(str(err))

    c1, c2, c3, c4 = st.columns(4)
    seeds_text = c1.text_input("Seeds", value="0, 1", key="seeds")
    steps = c2.number_input("Steps per run", value=int(wl.default_steps), step=50, key="steps")
    eval_every = c3.number_input("Evaluate every", value=25, step=5, key="eval_every")
    device = c4.selectbox("Device", ["auto", "cpu", "cuda"], key="device")
    try:
        seeds = forms.parse_values(seeds_text, "seeds", int)
    except SpecError as err:
        problems.append(str(err))
        seeds = []
    training = _training_settings()
    if problems:
        # Named here, where the chosen optimizers are known: "AdamW lr", not optimizers.1.
        named = {"optimizers": [{"name": o} for o in chosen]}
        raise SpecError(human_problems("\n".join(problems), named))
    return {
        "name": name,
        "workload": {"name": wl_name, "settings": settings},
        "optimizers": entries,
        "seeds": seeds,
        "steps": int(steps),
        "eval_every": int(eval_every),
        "device": device,
        **training,
    }


def _training_settings() -> dict[str, Any]:
    """Schedule, clipping, budgets and diagnostics; only values away from the defaults."""
    fields = StudySpec.model_fields
    out: dict[str, Any] = {}
    with st.expander("Training settings (schedule, clipping, budget, diagnostics)"):
        c1, c2, c3 = st.columns(3)
        out["lr_schedule"] = c1.selectbox("lr schedule", ["constant", "cosine", "linear"],
                                          key="lr_schedule",
                                          help=fields["lr_schedule"].description)
        out["warmup_steps"] = int(c2.number_input("warmup steps", value=0, step=10,
                                                  key="warmup_steps"))
        out["min_lr_ratio"] = float(c3.number_input("final lr ratio", value=0.0, format="%g",
                                                    key="min_lr_ratio",
                                                    help=fields["min_lr_ratio"].description))
        c1, c2, c3 = st.columns(3)
        clip = float(c1.number_input("gradient clip (0: off)", value=0.0, format="%g",
                                     key="grad_clip"))
        out["grad_clip"] = clip if clip != 0 else None
        seconds = float(c2.number_input("time budget, s (0: none)", value=0.0, format="%g",
                                        key="max_seconds"))
        out["max_seconds"] = seconds if seconds != 0 else None
        out["diagnostics_every"] = int(c3.number_input(
            "diagnostics every (0: off)", value=0, step=10, key="diagnostics_every",
            help="alignment γ, descent potential Φ and η* every k steps (costly)"))
        out["log_grad_norm"] = st.checkbox("record the gradient norm every step", value=True,
                                           key="log_grad_norm")
        capture = st.text_input(
            "capture gradient and momentum matrices at steps (for the Approximation lab)", "",
            key="capture_steps", placeholder="e.g. 100, 500",
            help=fields["capture_steps"].description)
        out["capture_steps"] = forms.parse_values(capture, "capture_steps", int) \
            if capture.strip() else []
    return {k: v for k, v in out.items()
            if v != fields[k].get_default(call_default_factory=True)}


def _submit(spec: StudySpec) -> None:
    services = get_services()
    if services.broker_url is None or services.broker_error:
        st.error(f"Cannot submit: {plain(services.broker_error)}")
        return
    try:
        sub = actions.submit_study(access.current(), services, spec)
    except (redis.RedisError, OSError) as err:
        st.error(f"Cannot submit: the broker did not answer ({plain(err)}). "
                 "Submitting again once it is back is safe: no run is queued twice.")
        return
    services.refresh()
    st.session_state["flash"] = (
        f"Queued {sub.queued} of {len(sub.runs)} runs."
        if sub.queued else "This exact study was submitted before; showing it."
    )
    from approximant.app.navigation import page

    st.switch_page(page("study"), query_params={"study": sub.study_id})


def _show_errors(err: SpecError, spec: dict | None = None, paths: bool = False) -> None:
    """Each problem under the field's name as the form shows it (``AdamW lr``); with the spec
    path beside it where the user wrote the spec (``paths``)."""
    st.error("The study cannot run yet:\n\n" + plain_lines(human_problems(err, spec, paths)))


def _toml_dict(text: str) -> dict | None:
    """The TOML as a plain dict, to name an error's optimizer; None if it does not parse."""
    import tomllib

    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError):
        return None


def _presets_tab() -> None:
    """Pick a preset, read what it is and what it costs, see its spec, run it (or copy it to
    the TOML tab to change it first)."""
    found = presets.presets()
    if not found:
        st.caption(f"No presets found in {presets.presets_dir()} (set "
                   f"{presets.ENV_PRESETS} to the examples/presets folder of a checkout).")
        return
    lines = "\n".join(f"* **{name}**: {plain(p.summary)}" for name, p in found.items())
    st.markdown("Ready-made studies that put the claims of *Muon is Not That Special* to the "
                "test at CPU scale; `approximant report` (or *Share and export* on the study "
                f"page) turns a finished one into a reproduction report.\n\n{lines}")
    name = st.selectbox("Preset", list(found), index=None, key="preset",
                        placeholder="choose a preset")
    if name is None:
        return
    preset = found[name]
    # The header's paragraphs, reflowed: the file wraps at 100 columns, the page should not.
    st.markdown("\n\n".join(" ".join(par.split()) for par in preset.description.split("\n\n")))
    try:
        spec = parse_study(preset.data())
    except SpecError as err:
        _show_errors(err, preset.data(), paths=True)
        return
    st.info(f"{spec.n_runs()} runs · study id `{spec.study_id}` · "
            f"`approximant run --preset {name}` runs the same from a terminal")
    with st.expander("The preset's spec (TOML)"):
        st.code(preset.text, language="toml")
    c = st.columns(2)
    if c[0].button("Run this preset", type="primary", key="run_preset"):
        _submit(spec)
    # A callback, which runs before the next script run draws the TOML tab's text area: the
    # area's value can only be set before it is drawn.
    c[1].button("Copy to the TOML spec tab to edit", key="edit_preset", on_click=_to_toml,
                args=(preset,))


def _to_toml(preset: presets.Preset) -> None:
    st.session_state["toml"] = preset.text
    st.session_state["flash_new"] = (f"The {preset.name} preset is in the TOML spec tab: change "
                                     "it there and press Validate and run.")


def render() -> None:
    st.title("New study")
    if flash := st.session_state.pop("flash_new", None):
        st.success(plain(flash))
    st.caption("New here? The **Presets** tab runs the paper's comparisons in one click.")
    tab_form, tab_toml, tab_presets = st.tabs(["Form", "TOML spec", "Presets"])
    with tab_form:
        spec = None
        data = None
        try:
            data = _build_spec_dict()
            spec = parse_study(data)
        except SpecError as err:
            _show_errors(err, data)
        if spec is not None:
            st.info(f"{spec.n_runs()} runs · study id `{spec.study_id}`")
            with st.expander("As a spec file for `approximant run`"):
                st.code(forms.spec_to_toml(spec.model_dump(mode="json")), language="toml")
        if st.button("Run", type="primary", disabled=spec is None, key="run"):
            _submit(spec)
    with tab_toml:
        text = st.text_area("Study spec (TOML)", height=300, key="toml",
                            placeholder='name = "my study"\nseeds = [0, 1]\n...')
        if st.button("Validate and run", key="run_toml"):
            try:
                _submit(parse_study_toml(text))
            except SpecError as err:
                _show_errors(err, _toml_dict(text), paths=True)
    with tab_presets:
        _presets_tab()
