"""Absurd values typed into settings fields are refused at the field with core's reason.

Each value is typed through the real widget (select all, type, Return) as a user does. A refused
field shows core's message in a red line under it and in its tooltip, is marked (the dynamic
property invalid=true gives it a red border), and the panel's Start / Sample / Export button is
disabled until a valid value is typed; the last valid settings stay in effect.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QGroupBox, QSpinBox

from diffusion_studio.app.panels.forward_panel import ForwardPanel
from diffusion_studio.app.panels.playback_panel import PlaybackPanel
from diffusion_studio.app.panels.schedule_panel import SchedulesPanel
from diffusion_studio.app.panels.training_panel import TrainingPanel
from diffusion_studio.app.widgets import FieldCheck, set_combo_data
from diffusion_studio.core.models import UNetConfig


def type_into(qtbot, field, text: str) -> None:
    """Replace the field's text by `text` with key presses and press Return."""
    field.setFocus()
    field.selectAll()
    qtbot.keyClicks(field, text)
    qtbot.keyClick(field, Qt.Key.Key_Return)


def assert_refused(checks: FieldCheck, field, needles: list[str]) -> str:
    """The field shows a reason containing every needle, in its label and tooltip, marked."""
    reason = checks.problem(field)
    for needle in needles:
        assert needle in reason, reason
    label = checks.label(field)
    if label is checks.shared_label:  # a field outside a form: its line names it
        assert label.isVisible() and f"{field.accessibleName()}: {reason}" in label.text()
    else:
        assert label.isVisible() and label.text() == reason
    assert reason in field.toolTip()
    assert field.property("invalid") is True
    assert not checks.valid
    return reason


def assert_accepted(checks: FieldCheck, field) -> None:
    assert checks.problem(field) == ""
    assert not checks.label(field).isVisible()
    assert "Refused" not in field.toolTip()
    assert field.property("invalid") is False


def assert_all_clear(checks: FieldCheck) -> None:
    assert checks.valid
    for field in checks.fields:
        assert_accepted(checks, field)


# ---------------------------------------------------------------------------- helper


def test_field_check_shows_cores_reason_for_an_image_size_the_unet_cannot_downsample(qtbot, show):
    """The helper itself, on a form with one field checked by UNetConfig (two 2x downsamplings):
    an image size not divisible by 4 gets core's message, a divisible one clears it."""
    box = QGroupBox()
    form = QFormLayout(box)
    size = QSpinBox()
    size.setRange(8, 128)
    size.setValue(32)
    size.setKeyboardTracking(False)
    form.addRow("Image size", size)
    show(box)
    checks = FieldCheck(box, lambda: UNetConfig(image_size=size.value(), channels=(8, 8, 8)))
    checks.add(size)
    type_into(qtbot, size, "30")
    reason = assert_refused(checks, size, ["image size 30", "not divisible by 4", "use 28 or 32"])
    assert form.getWidgetPosition(checks.label(size))[0] == 1  # the row under the field
    assert reason == checks.first_problem()
    type_into(qtbot, size, "28")
    assert_all_clear(checks)


# ---------------------------------------------------------------------------- training


@pytest.fixture
def training(show):
    return show(TrainingPanel())


def test_training_defaults_show_no_reason(training):
    assert_all_clear(training.fields)
    assert training.start_button.isEnabled()


# (field, budget, typed, words of core's message, a valid value)
TRAINING_CASES = [
    ("steps_T", None, "0", ["T = 0", "too small"], "1000"),
    ("steps_T", None, "1000000000", ["T = 1000000000", "too large"], "500"),
    ("lr", None, "-0.001", ["learning rate", "-0.001"], "0.002"),
    ("lr", None, "0", ["learning rate must be > 0"], "0.002"),
    ("lr", None, "10", ["learning rate 10", "too large"], "0.002"),
    ("batch", None, "0", ["batch size", "got 0"], "64"),
    ("batch", None, "1000000", ["batch size", "1..65536", "got 1000000"], "64"),
    ("max_steps", "steps", "0", ["number of steps", "got 0"], "100"),
    ("max_minutes", "minutes", "0", ["time budget", "got 0"], "5"),
    ("autosave_minutes", None, "500", ["500.0 min is out of range", "120.0 min"], "2"),
]


@pytest.mark.parametrize(
    "name, budget, typed, needles, valid",
    TRAINING_CASES,
    ids=[f"{c[0]}={c[2]}" for c in TRAINING_CASES],
)
def test_training_field_refuses_absurd_values(
    training, qtbot, fake_dialogs, name, budget, typed, needles, valid
):
    if budget is not None:
        set_combo_data(training.budget, budget)
    field = getattr(training, name)
    type_into(qtbot, field, typed)
    reason = assert_refused(training.fields, field, needles)
    assert not training.start_button.isEnabled()
    assert not training.start()  # started from code anyway: refused with the same reason
    assert not training.runner.is_running
    assert fake_dialogs.errors[-1] == ("Cannot start training", reason)
    type_into(qtbot, field, valid)
    assert_all_clear(training.fields)
    assert training.start_button.isEnabled()
    training.build_config()  # the fields make a config again


def test_training_image_size_is_checked_by_core_and_the_fields_limit(training, qtbot, image_folder):
    """Image size 0 gets UNetConfig's reason; 4 and 1000 are outside the field's own limit
    (8..128 px: the images are loaded at that size); an odd size such as 30 gets a UNet that
    fits it (core's preset), so it is accepted."""
    assert training.set_data_folder(image_folder)
    field = training.image_size
    type_into(qtbot, field, "0")
    assert_refused(training.fields, field, ["image_size", "got 0"])
    assert not training.start_button.isEnabled()
    assert "color:#b00020" in training.model_info.text()  # the model line shows it too
    for typed in ("4", "1000"):
        type_into(qtbot, field, typed)
        assert_refused(training.fields, field, [f"{typed} px is out of range", "8..128 px"])
    assert training.folder_shape[0] == 32  # the refused sizes were never taken
    type_into(qtbot, field, "30")
    assert_all_clear(training.fields)
    assert training.start_button.isEnabled()
    model = training.build_config().model
    assert model.image_size == 30 and 30 % model.size_factor == 0
    assert f"UNet {list(model.channels)}" in training.model_info.text()


def test_training_each_refused_field_keeps_its_own_reason(training, qtbot):
    """T = 0 and then batch 0: each field shows its own reason; fixing one leaves the other."""
    type_into(qtbot, training.steps_T, "0")
    type_into(qtbot, training.batch, "0")
    assert_refused(training.fields, training.steps_T, ["T = 0"])
    assert_refused(training.fields, training.batch, ["batch size", "got 0"])
    type_into(qtbot, training.steps_T, "100")
    assert_accepted(training.fields, training.steps_T)
    assert_refused(training.fields, training.batch, ["batch size"])
    assert not training.start_button.isEnabled()
    type_into(qtbot, training.batch, "8")
    assert_all_clear(training.fields)
    assert training.start_button.isEnabled()
    assert training.build_config().batch_size == 8


def test_training_a_refused_field_that_is_no_longer_used_is_cleared(training, qtbot):
    set_combo_data(training.budget, "steps")
    type_into(qtbot, training.max_steps, "0")
    assert not training.fields.valid
    set_combo_data(training.budget, "minutes")  # the steps field is not used any more
    assert_all_clear(training.fields)
    assert training.start_button.isEnabled()


# ---------------------------------------------------------------------------- schedules


@pytest.fixture
def schedules(show):
    return show(SchedulesPanel())


def test_schedules_defaults_show_no_reason(schedules):
    assert_all_clear(schedules.fields)
    assert schedules.add_button.isEnabled()


SCHEDULE_CASES = [
    ("steps", "0", ["T = 0", "too small"], "500"),
    ("steps", "1000000000", ["T = 1000000000", "too large", "100000"], "500"),
    ("beta_start", "0", ["beta_start = 0.0", "(0, 1)"], "0.0002"),
    ("beta_end", "1.5", ["beta_end = 1.5", "(0, 1)"], "0.03"),
    ("beta_start", "0.05", ["beta_start = 0.05", "larger than beta_end = 0.02"], "0.0002"),
]


@pytest.mark.parametrize(
    "name, typed, needles, valid", SCHEDULE_CASES, ids=[f"{c[0]}={c[1]}" for c in SCHEDULE_CASES]
)
def test_schedule_field_refuses_absurd_values(schedules, qtbot, name, typed, needles, valid):
    before = schedules.schedule.config
    field = getattr(schedules, name)
    type_into(qtbot, field, typed)
    assert_refused(schedules.fields, field, needles)
    assert schedules.schedule.config == before  # the plots keep the last valid schedule
    assert not schedules.add_button.isEnabled()
    type_into(qtbot, field, valid)
    assert_all_clear(schedules.fields)
    assert schedules.add_button.isEnabled()
    assert schedules.schedule.config != before  # and now show the new one


def test_schedule_beta_range_fixed_from_the_other_field(schedules, qtbot):
    """beta_start above beta_end is refused at beta_start; raising beta_end fixes it."""
    type_into(qtbot, schedules.beta_start, "0.05")
    assert_refused(schedules.fields, schedules.beta_start, ["larger than beta_end"])
    type_into(qtbot, schedules.beta_end, "0.1")
    assert_all_clear(schedules.fields)
    assert schedules.schedule.config.beta_start == pytest.approx(0.05)


def test_schedule_cosine_ignores_a_refused_beta_range(schedules, qtbot):
    type_into(qtbot, schedules.beta_end, "1.5")
    assert not schedules.fields.valid
    set_combo_data(schedules.kind, "cosine")  # the cosine schedule has no beta range
    assert_all_clear(schedules.fields)


# ---------------------------------------------------------------------------- playback


@pytest.fixture
def playback(show, checkpoints):
    panel = show(PlaybackPanel())
    assert panel.load_checkpoint(checkpoints.images)  # T = 100
    return panel


def test_playback_defaults_show_no_reason(playback):
    assert_all_clear(playback.fields)
    assert_all_clear(playback.sampler_form.fields)
    for checks in playback.sampler_form.option_checks.values():
        assert_all_clear(checks)
    assert_all_clear(playback.export_fields)
    assert playback.sample_button.isEnabled()


PLAYBACK_CASES = [
    ("num_steps", "ddim", False, "500", ["sampling steps 500", "1..100", "T"], "20"),
    ("num_steps", "ddpm", False, "0", ["sampling steps", "got 0"], "20"),
    ("eta", "ddim", False, "1.5", ["DDIM eta = 1.5", "[0, 1]"], "0.5"),
    ("num_samples", "ddim", False, "0", ["0 is out of range", "1..20000"], "4"),
    ("start_t", "ddim", True, "500", ["timestep out of range", "500", "0..99"], "40"),
]


def field_and_checks(playback, name: str):
    """The field called `name` and the FieldCheck that judges it: the sampler form's (steps,
    the sampler's own options) or Playback's."""
    form = playback.sampler_form
    if name == "num_steps":
        return form.steps, form.fields
    if name in form.option_widgets[form.spec.name]:
        return form.option_widget(name), form.option_checks[form.spec.name]
    return getattr(playback, name), playback.fields


@pytest.mark.parametrize(
    "name, kind, from_image, typed, needles, valid",
    PLAYBACK_CASES,
    ids=[f"{c[0]}={c[3]}" for c in PLAYBACK_CASES],
)
def test_playback_field_refuses_absurd_values(
    playback, qtbot, fake_dialogs, name, kind, from_image, typed, needles, valid
):
    set_combo_data(playback.sampler_kind, kind)
    playback.from_image.setChecked(from_image)
    field, checks = field_and_checks(playback, name)
    type_into(qtbot, field, typed)
    reason = assert_refused(checks, field, needles)
    assert not playback.sample_button.isEnabled()
    assert not playback.start_sampling()
    assert fake_dialogs.errors[-1] == ("Cannot sample", reason)
    assert not playback.runner.is_running
    type_into(qtbot, field, valid)
    assert_all_clear(checks)
    assert_all_clear(playback.fields)
    assert playback.sample_button.isEnabled()


def test_playback_eta_is_not_checked_for_ddpm(playback, qtbot):
    form = playback.sampler_form
    set_combo_data(playback.sampler_kind, "ddim")
    eta = form.option_widget("eta")
    type_into(qtbot, eta, "1.5")
    assert not form.valid and not playback.sample_button.isEnabled()
    set_combo_data(playback.sampler_kind, "ddpm")  # DDPM has no eta: its page is hidden
    assert form.valid and not eta.isVisible()
    assert_all_clear(playback.fields)
    assert playback.sample_button.isEnabled()
    assert playback.request().sampler.kind == "ddpm"
    set_combo_data(playback.sampler_kind, "ddim")  # back: the typed 1.5 is still refused
    assert_refused(form.option_checks["ddim"], eta, ["DDIM eta = 1.5"])
    assert not playback.sample_button.isEnabled()


def test_playback_export_settings_out_of_range_are_refused(playback, qtbot):
    type_into(qtbot, playback.export_fps, "0")
    assert_refused(playback.export_fields, playback.export_fps, ["0 fps is out of range"])
    assert playback.fields.valid  # sampling is not blocked by an export setting
    type_into(qtbot, playback.export_fps, "12")
    assert_all_clear(playback.export_fields)


# ---------------------------------------------------------------------------- forward


@pytest.fixture
def forward(show):
    return show(ForwardPanel())


def test_forward_defaults_show_no_reason(forward):
    assert_all_clear(forward.gif_fields)
    assert forward.gif_button.isEnabled()


@pytest.mark.parametrize(
    "name, typed, needles, valid",
    [
        ("gif_frames", "0", ["0 is out of range", "2..500"], "20"),
        ("gif_fps", "1000", ["1000 fps is out of range", "1..50 fps"], "10"),
        ("gif_size", "100000", ["100000 px is out of range", "16..1024 px"], "128"),
    ],
)
def test_forward_gif_settings_out_of_range_are_refused(
    forward, qtbot, fake_dialogs, name, typed, needles, valid
):
    forward.load_default_image()
    field = getattr(forward, name)
    type_into(qtbot, field, typed)
    reason = assert_refused(forward.gif_fields, field, needles)
    assert not forward.gif_button.isEnabled()
    forward.export_gif()  # from code anyway: refused before any file dialog
    assert fake_dialogs.errors[-1] == ("Export GIF", reason)
    type_into(qtbot, field, valid)
    assert_all_clear(forward.gif_fields)
    assert forward.gif_button.isEnabled()


# ---------------------------------------------------------------------------- nothing clamped


def test_playback_guidance_out_of_range_gets_cores_reason(show, checkpoints, qtbot, fake_dialogs):
    """Guidance 99999 used to become 9.0 in silence: now core's check_guidance_scale refuses
    it at the field and Sample waits."""
    panel = show(PlaybackPanel())
    assert panel.load_checkpoint(checkpoints.conditional)
    type_into(qtbot, panel.guidance, "99999")
    reason = assert_refused(panel.fields, panel.guidance, ["guidance scale", "between 0 and 20"])
    assert not panel.sample_button.isEnabled()
    assert not panel.start_sampling()
    assert fake_dialogs.errors[-1] == ("Cannot sample", reason)
    type_into(qtbot, panel.guidance, "3")
    assert_all_clear(panel.fields)
    assert panel.request().guidance_scale == 3.0


@pytest.mark.parametrize(
    "typed, needles",
    [
        ("99999999999", ["99999999999 is out of range", "0..2147483647", "kept 7"]),
        ("abc", ["'abc' is not a whole number", "0..2147483647", "kept 7"]),
    ],
)
def test_seed_typed_out_of_range_or_as_text_is_refused_not_changed(playback, qtbot, typed, needles):
    """A Seed of text, or too many digits, used to become 999999999 (the keys Qt swallowed):
    the typed text is refused at the field with a reason, and the seed stays what it was."""
    type_into(qtbot, playback.seed, "7")
    type_into(qtbot, playback.seed, typed)
    assert_refused(playback.fields, playback.seed, needles)
    assert playback.seed.value() == 7 and not playback.sample_button.isEnabled()
    type_into(qtbot, playback.seed, "8")
    assert_all_clear(playback.fields)
    assert playback.request().seed == 8


def test_playback_frame_numbers_are_checked_against_the_stored_frames(playback, qtbot):
    with qtbot.waitSignal(playback.runner.finished, timeout=60000):
        set_combo_data(playback.sampler_kind, "ddim")
        playback.num_steps.setValue(4)
        playback.num_samples.setValue(2)
        assert playback.start_sampling()
    playback.runner.wait(10)
    type_into(qtbot, playback.export_to, "50")
    type_into(qtbot, playback.sample_index, "9")
    checks = playback.export_fields
    assert checks.problem(playback.export_to) == "50 is out of range: use 0..4"
    assert checks.problem(playback.sample_index) == "9 is out of range: use 0..1"
    # these fields sit outside a form: one red line under the export settings names each
    assert checks.label(playback.export_to) is checks.shared_label
    assert checks.shared_label.isVisible()
    assert checks.shared_label.text() == (
        "Sample #: 9 is out of range: use 0..1\nTo frame: 50 is out of range: use 0..4"
    )
    assert not playback.gif_button.isEnabled()
    type_into(qtbot, playback.export_to, "3")
    type_into(qtbot, playback.sample_index, "1")
    assert_all_clear(playback.export_fields)
    assert not checks.shared_label.isVisible()
    assert playback.gif_button.isEnabled()


def test_forward_seed_text_is_refused_and_the_noise_stays(forward, qtbot):
    forward.load_default_image()
    before = forward.process.noise.copy()
    type_into(qtbot, forward.seed, "12345678901")
    assert_refused(forward.seed_field, forward.seed, ["out of range", "0..2147483647"])
    np.testing.assert_array_equal(forward.process.noise, before)
    type_into(qtbot, forward.seed, "3")
    assert_all_clear(forward.seed_field)
    assert forward.process.seed == 3
