"""The sampler form is generated from the registry: every sampler listed with its help, every
option of its options dataclass a field with the metadata's limits or choices, core's own
messages for refused values, Karras only where offered, settings that survive a sampler
leaving the registry."""

from __future__ import annotations

from dataclasses import fields

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QComboBox

from diffusion_studio.app.sampler_form import SamplerForm, option_label, widget_value
from diffusion_studio.app.widgets import set_combo_data
from diffusion_studio.core.errors import ConfigError
from diffusion_studio.core.flow import FlowPath, forward_path
from diffusion_studio.core.samplers import (
    REGISTRY,
    SamplerConfig,
    default_sampler_config,
    make_sampler,
    samplers_for_objective,
)
from diffusion_studio.core.schedule import NoiseSchedule, ScheduleConfig
from tests.app.test_field_validation import assert_all_clear, assert_refused, type_into

SCHEDULE = ScheduleConfig("cosine", 100)


@pytest.fixture
def form(show):
    form = show(SamplerForm())
    form.set_model(SCHEDULE, "epsilon")
    return form


PREDICTION = {"diffusion": "epsilon", "flow": "velocity"}


def use_objective(form, objective: str) -> None:
    """Give the form a model of `objective` on SCHEDULE's T."""
    form.set_model(SCHEDULE, PREDICTION[objective], objective)


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_every_registered_sampler_of_the_models_objective_is_offered_with_its_help(form, objective):
    use_objective(form, objective)
    specs = samplers_for_objective(objective)
    assert form.kinds() == [spec.name for spec in specs] and specs
    assert {s.name for s in samplers_for_objective("diffusion")} | set(
        s.name for s in samplers_for_objective("flow")
    ) == set(REGISTRY)
    for i, spec in enumerate(specs):
        assert form.kind.itemText(i) == spec.label
        assert form.kind.itemData(i, Qt.ItemDataRole.ToolTipRole) == spec.help


def test_switching_objective_lists_its_samplers_with_cores_defaults(form):
    """A flow model: flow samplers only, core's flow default shown; back to a diffusion model:
    diffusion samplers with core's diffusion default (no flow sampler left chosen)."""
    form.set_config(SamplerConfig("ddim", 20, "linspace", options={"eta": 0.5}))
    use_objective(form, "flow")
    assert form.objective == "flow"
    assert all(REGISTRY[k].objective == "flow" for k in form.kinds())
    assert form.config() == default_sampler_config(False, None, "flow")
    make_sampler(form.config(), FlowPath(SCHEDULE.num_timesteps), "velocity")  # core takes it
    assert form.valid
    set_combo_data(form.kind, "flow-heun")
    use_objective(form, "flow")  # the same objective again: the user's choice stays
    assert form.config().kind == "flow-heun"
    use_objective(form, "diffusion")
    assert all(REGISTRY[k].objective == "diffusion" for k in form.kinds())
    assert form.config() == default_sampler_config(False, None, "diffusion")
    assert form.valid


def test_steps_are_checked_on_a_flow_models_path(form, qtbot):
    form.set_model(ScheduleConfig("linear", 40), "velocity", "flow")
    type_into(qtbot, form.steps, "41")
    assert not form.valid and "1..40" in form.first_problem()
    type_into(qtbot, form.steps, "40")
    assert form.valid


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_samplers_options_and_karras_follow_its_spec(form, name):
    spec = REGISTRY[name]
    use_objective(form, spec.objective)
    assert set_combo_data(form.kind, name)
    assert form.spec is spec and spec.help in form.kind.toolTip()
    assert form.karras.isVisible() == spec.karras
    for other, page in form.pages.items():
        assert page.isVisible() == (other == name)
    expected = {f.name: f for f in fields(spec.options_class)}
    assert set(form.option_widgets[name]) == set(expected)
    for option, f in expected.items():
        widget = form.option_widget(option)
        assert widget.isVisible() and widget.toolTip() == f.metadata.get("help", "")
        if "choices" in f.metadata:
            assert isinstance(widget, QComboBox)
            assert [widget.itemData(i) for i in range(widget.count())] == list(
                f.metadata["choices"]
            )
        elif not isinstance(widget, QCheckBox):
            assert option_label(option) in widget.accessibleName()
    # the form's config is core's SamplerConfig of what it shows, defaults filled in
    config = form.config()
    assert config == SamplerConfig(
        name,
        form.steps.value(),
        form.spacing.currentData(),
        clip_sample=form.clip_x0.isChecked(),
        karras=spec.karras and form.karras.isChecked(),
        options={o: widget_value(w) for o, w in form.option_widgets[name].items()},
    )
    assert config.options == {f: getattr(spec.options_class(), f) for f in expected}
    # core takes it
    make_sampler(config, forward_path(spec.objective, SCHEDULE), PREDICTION[spec.objective])


def test_karras_reaches_the_config_only_where_offered(form):
    diffusion = {s.name: s for s in samplers_for_objective("diffusion")}
    karras = [n for n, s in diffusion.items() if s.karras]
    plain = [n for n, s in diffusion.items() if not s.karras]
    if not karras:
        pytest.skip("no sampler with Karras sigmas registered yet")
    set_combo_data(form.kind, karras[0])
    form.karras.setChecked(True)
    assert form.config().karras and "Karras sigmas" in form.config().summary()
    set_combo_data(form.kind, plain[0])
    assert not form.karras.isVisible() and not form.config().karras  # core would refuse it


def test_numbers_are_refused_with_cores_message(form, qtbot):
    type_into(qtbot, form.steps, "500")
    assert_refused(form.fields, form.steps, ["sampling steps 500", "1..100", "T"])
    assert not form.valid and "1..100" in form.first_problem()
    with pytest.raises(ConfigError):
        make_sampler(form.config(), NoiseSchedule(SCHEDULE), "epsilon")
    type_into(qtbot, form.steps, "30")
    assert_all_clear(form.fields)
    assert form.valid
    # every bounded number option: a value beyond its maximum gets core's range message
    for name, spec in REGISTRY.items():
        for f in fields(spec.options_class):
            high = f.metadata.get("maximum")
            if high is None or "choices" in f.metadata or isinstance(f.default, bool):
                continue
            use_objective(form, spec.objective)
            assert set_combo_data(form.kind, name)
            widget = form.option_widget(f.name)
            type_into(qtbot, widget, str(high + 1))
            checks = form.option_checks[name]
            assert_refused(checks, widget, [f"{spec.label} {f.name}", "out of range"])
            with pytest.raises(ConfigError, match="out of range"):
                form.config()
            type_into(qtbot, widget, str(f.default))
            assert form.valid


def test_a_model_clamps_steps_to_its_t(form):
    form.steps.setValue(80)
    form.set_model(ScheduleConfig("linear", 50), "epsilon")
    assert form.steps.value() == 50 and form.valid


def test_set_config_and_the_changed_signal(form, qtbot):
    target = SamplerConfig("ddim", 12, "linspace", clip_sample=True, options={"eta": 0.25})
    with qtbot.waitSignal(form.changed, timeout=1000):
        form.set_config(target)
    assert form.config() == target
    with qtbot.waitSignal(form.changed, timeout=1000):
        form.spacing.setCurrentIndex((form.spacing.currentIndex() + 1) % form.spacing.count())


def test_saved_settings_round_trip_and_a_vanished_sampler_is_skipped(form, show):
    form.set_config(SamplerConfig("ddim", 12, "trailing", options={"eta": 0.5}))
    state = form.state()
    again = show(SamplerForm())
    assert again.restore(state) == []
    assert again.config() == form.config()
    state["kind"] = "gone-sampler"
    state["options"]["gone-sampler"] = {"x": 1}
    state["options"]["ddim"]["no_such_option"] = 3
    third = show(SamplerForm())
    before = third.config().kind
    skipped = third.restore(state)
    assert any("gone-sampler" in s for s in skipped)
    assert any("no_such_option" in s for s in skipped)
    assert third.config().kind == before  # kept its sampler, still valid
    assert third.option_widget("eta", "ddim").value() == 0.5  # what still fits is restored
    assert third.valid
    assert third.restore("garbage") != []


def test_picking_a_sampler_sets_its_karras_default(form):
    """Heun comes with Karras sigmas ticked (its default: without them its first step on the
    cosine schedule ruins the samples); a sampler without that default unticks it."""
    set_combo_data(form.kind, "heun")
    assert form.karras.isChecked() and form.config().karras
    set_combo_data(form.kind, "euler")
    assert not form.karras.isChecked() and not form.config().karras
    form.karras.setChecked(True)  # the user's own choice stays until the sampler changes
    assert form.config().karras


def test_a_saved_sampler_of_the_other_objective_is_skipped_with_the_reason(form, show):
    """Settings saved with a flow model, restored while a diffusion model is loaded: the flow
    sampler is not chosen (the form keeps a diffusion sampler) and the log says why."""
    use_objective(form, "flow")
    set_combo_data(form.kind, "flow-heun")
    state = form.state()
    again = show(SamplerForm())
    again.set_model(SCHEDULE, "epsilon")
    before = again.config().kind
    skipped = again.restore(state)
    assert any("flow-heun" in s and "flow models" in s for s in skipped)
    assert again.config().kind == before and again.valid
    use_objective(again, "flow")
    assert again.restore(state) == [] and again.config().kind == "flow-heun"
