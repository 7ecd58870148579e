"""A sampler form generated from the sampler registry (`core.samplers.REGISTRY`).

One combo box lists every registered sampler (its label; its help as the tooltip), then the
settings every sampler shares (steps, spacing, Karras sigmas where the sampler offers them,
x_0 clipping) and one field per option of the chosen sampler, built from its options
dataclass: a field's metadata gives the help (tooltip), `minimum` / `maximum` (numbers) or
`choices` (a combo box). Nothing here names a sampler: a sampler added to the registry gets
its row in the combo box and its option fields by itself.

Values are checked with core's own messages (`app.widgets.FieldCheck`): steps against the
loaded model's T by building the sampler (`make_sampler`), each sampler's options by building
its `SamplerConfig`. Every sampler's option fields are built once (one page each, only the
chosen one shown), so a value typed for one sampler is kept when another is chosen for a while.

The combo box lists only the samplers of the model's objective (`samplers_for_objective`):
diffusion samplers for a diffusion model, flow samplers (`core.samplers.flow_match`) for a
flow-matching one. When `set_model` brings the other objective, the list is replaced and the
form shows core's default sampler for that objective (`default_sampler_config`): no sampler of
the other kind stays chosen.
"""

from __future__ import annotations

import logging
import math
from dataclasses import MISSING, Field, fields
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFormLayout, QVBoxLayout, QWidget

from diffusion_studio.app.widgets import (
    FieldCheck,
    NumberBox,
    check_box,
    combo_box,
    double_box,
    set_combo_data,
    spin_box,
)
from diffusion_studio.core.flow import ForwardPath, check_objective, forward_path
from diffusion_studio.core.samplers import (
    REGISTRY,
    TIMESTEP_SPACINGS,
    PredictionType,
    SamplerConfig,
    SamplerSpec,
    default_sampler_config,
    make_sampler,
    samplers_for_objective,
)
from diffusion_studio.core.schedule import ScheduleConfig

log = logging.getLogger(__name__)

SPACING_TIP = "How the sampling timesteps are spread over 0..T-1 (trailing starts at T-1)"
CLIP_TEXT = "Clip x0 prediction to [-1, 1]"
CLIP_TIP = (
    "Clamp the model's x_0 estimate at every step (diffusers' clip_sample); the noise estimate "
    "is recomputed from the clamped x_0. On by default for image models (their data range; it "
    "keeps an epsilon model on the cosine schedule from blowing up at t near T), off for 2-D "
    "points"
)
KARRAS_TIP = "Space the noise levels as Karras et al. 2022 eq. 5 (rho = 7): more steps at low noise"
OptionWidget = NumberBox | QComboBox | QCheckBox


def option_label(name: str) -> str:
    """'variance_type' -> 'variance type' (how an option is named in the form)."""
    return name.replace("_", " ")


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def option_widget(f: Field) -> OptionWidget | None:
    """The field for one option of a sampler's options dataclass, from its metadata: choices
    -> a combo box, a bool -> a check box, an int / float -> a spin box (None: an option of a
    type the form cannot offer; it keeps its default)."""
    help_text = str(f.metadata.get("help", ""))
    default = _default(f)
    choices = f.metadata.get("choices")
    if choices is not None:
        box = combo_box([(str(c), c) for c in choices], help_text)
        set_combo_data(box, default)
        return box
    if isinstance(default, bool):
        return check_box(option_label(f.name), help_text, default)
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if isinstance(default, int):
        lo = int(low) if low is not None else -(2**31)
        hi = int(high) if high is not None else 2**31 - 1
        return spin_box(lo, hi, default, help_text)
    if isinstance(default, float):
        lo = float(low) if low is not None else -1e6
        hi = float(high) if high is not None else 1e6
        span = hi - lo if math.isfinite(hi - lo) else 1.0
        return double_box(lo, hi, default, help_text, decimals=3, step=min(0.1, span / 10))
    return None


def widget_value(widget: OptionWidget) -> Any:
    if isinstance(widget, QComboBox):
        return widget.currentData()
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    return widget.value()


def set_widget_value(widget: OptionWidget, value: Any) -> bool:
    """Put `value` into `widget`; False (nothing changed) when it does not fit the widget."""
    if isinstance(widget, QComboBox):
        return set_combo_data(widget, value)
    if isinstance(widget, QCheckBox):
        if not isinstance(value, bool):
            return False
        widget.setChecked(value)
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    widget.setValue(value)
    return True


class SamplerForm(QWidget):
    """Choose a sampler and its settings; `config()` is the `SamplerConfig` they make.

    changed(): any setting changed (after it was checked). `valid` / `first_problem()` say
    whether `config()` (and, with a model set, its sampler) would be refused, and why.
    `set_model` gives the schedule, prediction type and objective steps are checked against
    (1..T); the sampler list holds the samplers of that objective (`objective`).
    """

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._schedule: ForwardPath | None = None
        self._path_of: tuple[ScheduleConfig, str] | None = None  # what _schedule was made of
        self._prediction_type: PredictionType = "epsilon"
        self.objective = "diffusion"  # whose samplers the list offers
        self._clip_range = 1.0
        self._updating = False
        start = SamplerConfig()  # core's default sampler, steps and spacing

        self.kind = combo_box([], "")
        self._fill_kinds()
        set_combo_data(self.kind, start.kind)
        self.steps = spin_box(
            1, 10000, start.num_inference_steps, "Number of sampling steps (1..T of the model)"
        )
        self.spacing = combo_box([(s, s) for s in TIMESTEP_SPACINGS], SPACING_TIP)
        set_combo_data(self.spacing, start.spacing)
        self.karras = check_box("Karras sigmas", KARRAS_TIP)
        self.clip_x0 = check_box(CLIP_TEXT, CLIP_TIP, start.clip_sample)
        for widget, name in (
            (self.kind, "Sampler"),
            (self.steps, "Steps"),
            (self.spacing, "Spacing"),
        ):
            widget.setAccessibleName(name)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        common = QWidget()
        self._common_form = QFormLayout(common)
        self._common_form.setContentsMargins(0, 0, 0, 0)
        self._common_form.addRow("Sampler", self.kind)
        self._common_form.addRow("Steps", self.steps)
        self._common_form.addRow("Spacing", self.spacing)
        self._common_form.addRow("", self.karras)
        layout.addWidget(common)

        # one page of option fields per sampler (only the chosen sampler's is shown)
        self.option_widgets: dict[str, dict[str, OptionWidget]] = {}
        self.option_checks: dict[str, FieldCheck] = {}
        self.pages: dict[str, QWidget] = {}
        for spec in REGISTRY.values():
            page = QWidget()
            form = QFormLayout(page)
            form.setContentsMargins(0, 0, 0, 0)
            widgets: dict[str, OptionWidget] = {}
            for f in fields(spec.options_class):
                widget = option_widget(f)
                if widget is None:
                    log.info("%s option %s has no field in the form", spec.label, f.name)
                    continue
                widget.setAccessibleName(f"{spec.label} {option_label(f.name)}")
                if isinstance(widget, QCheckBox):
                    form.addRow("", widget)
                else:
                    form.addRow(option_label(f.name), widget)
                widgets[f.name] = widget
            check = FieldCheck(self, lambda name=spec.name: self._check_options(name))
            numbers = [w for w in widgets.values() if not isinstance(w, (QComboBox, QCheckBox))]
            check.add(*numbers)
            for w in widgets.values():
                if isinstance(w, QComboBox):
                    check.watch(w.currentIndexChanged)
                elif isinstance(w, QCheckBox):
                    check.watch(w.toggled)
            check.changed.connect(self._emit_changed)
            self.option_widgets[spec.name] = widgets
            self.option_checks[spec.name] = check
            self.pages[spec.name] = page
            page.setVisible(False)
            layout.addWidget(page)
        layout.addWidget(self.clip_x0)
        self._align_labels()

        # steps (and through them the spacing and Karras choice) are core's to judge
        self.fields = FieldCheck(self, self._check_common)
        self.fields.add(self.steps)
        self.fields.watch(self.spacing.currentIndexChanged, self.karras.toggled)
        self.fields.changed.connect(self._emit_changed)
        self.kind.currentIndexChanged.connect(self._on_kind_changed)
        self.clip_x0.toggled.connect(self._emit_changed)
        self._on_kind_changed()

    def _align_labels(self) -> None:
        """One label width for the common rows and every option page, so the fields line up
        whichever sampler is shown."""
        forms = [self._common_form, *(page.layout() for page in self.pages.values())]
        labels = []
        for form in forms:
            for row in range(form.rowCount()):
                item = form.itemAt(row, QFormLayout.ItemRole.LabelRole)
                if item is not None and item.widget() is not None:
                    labels.append(item.widget())
        width = max((label.sizeHint().width() for label in labels), default=0)
        for label in labels:
            label.setMinimumWidth(width)

    def _fill_kinds(self) -> None:
        """List the samplers of `self.objective` (label; help as the tooltip)."""
        self.kind.blockSignals(True)
        self.kind.clear()
        for i, spec in enumerate(samplers_for_objective(self.objective)):
            self.kind.addItem(spec.label, spec.name)
            self.kind.setItemData(i, spec.help, Qt.ItemDataRole.ToolTipRole)
        self.kind.blockSignals(False)

    def kinds(self) -> list[str]:
        """The sampler names the list offers now, in its order."""
        return [self.kind.itemData(i) for i in range(self.kind.count())]

    # ------------------------------------------------------------------ state

    @property
    def spec(self) -> SamplerSpec:
        """The chosen sampler's registry entry."""
        return REGISTRY[self.kind.currentData()]

    def option_widget(self, option: str, kind: str | None = None) -> OptionWidget:
        """The field of one option of sampler `kind` (default: the chosen one)."""
        return self.option_widgets[kind or self.spec.name][option]

    def options(self, kind: str | None = None) -> dict[str, Any]:
        """The option values in the fields of sampler `kind` (default: the chosen one)."""
        widgets = self.option_widgets[kind or self.spec.name]
        return {name: widget_value(w) for name, w in widgets.items()}

    def config(self) -> SamplerConfig:
        """The SamplerConfig the form describes (ConfigError with core's reason when refused)."""
        spec = self.spec
        return SamplerConfig(
            kind=spec.name,
            num_inference_steps=self.steps.value(),
            spacing=self.spacing.currentData(),
            clip_sample=self.clip_x0.isChecked(),
            clip_range=self._clip_range,
            karras=spec.karras and self.karras.isChecked(),
            options=self.options(spec.name),
        )

    @property
    def valid(self) -> bool:
        """Whether the chosen sampler's settings are accepted (steps and options)."""
        return self.fields.valid and self.option_checks[self.spec.name].valid

    def first_problem(self) -> str:
        """Why the settings are refused ("" when they are not)."""
        return self.fields.first_problem() or self.option_checks[self.spec.name].first_problem()

    def set_config(self, config: SamplerConfig) -> None:
        """Show `config` in the form (steps beyond the model's T are shown, and refused)."""
        self._updating = True
        try:
            set_combo_data(self.kind, config.kind)
            self.steps.setValue(config.num_inference_steps)
            set_combo_data(self.spacing, config.spacing)
            self.clip_x0.setChecked(config.clip_sample)
            self._clip_range = float(config.clip_range)
            if config.spec.karras:
                self.karras.setChecked(config.karras)
            widgets = self.option_widgets[config.kind]
            for name, value in config.options.items():
                if name in widgets:
                    set_widget_value(widgets[name], value)
        finally:
            self._updating = False
        self._recheck_all()

    def set_objective(self, objective: str) -> bool:
        """Offer the samplers of `objective` ("diffusion" or "flow"). On a change the list is
        replaced and core's default sampler for it is shown (`default_sampler_config`, image
        defaults: a caller with a 2-D model sets its clipping). True when it changed."""
        check_objective(objective)
        if objective == self.objective:
            return False
        self.objective = objective
        self._fill_kinds()  # (signals blocked: the shown page and tooltip follow here)
        self._on_kind_changed()
        self.set_config(default_sampler_config(False, None, objective))
        return True

    def set_model(
        self,
        schedule: ScheduleConfig | None,
        prediction_type: PredictionType,
        objective: str = "diffusion",
    ) -> None:
        """The model the settings are for: its objective's samplers are listed
        (`set_objective`), steps are checked against its T (and shown at most T when they
        were more) on its path (a NoiseSchedule, or a FlowPath for a flow model)."""
        if schedule is None:
            self._schedule, self._path_of = None, None
        else:
            self.set_objective(objective)
            if self._schedule is None or self._path_of != (schedule, objective):
                self._schedule = forward_path(objective, schedule)
                self._path_of = (schedule, objective)
            self._prediction_type = prediction_type
            self.steps.setValue(min(self.steps.value(), schedule.num_timesteps))
        self.fields.recheck()

    # ------------------------------------------------------------------ checks

    def _common_config(self) -> SamplerConfig:
        spec = self.spec
        return SamplerConfig(
            kind=spec.name,
            num_inference_steps=self.steps.value(),
            spacing=self.spacing.currentData(),
            clip_sample=self.clip_x0.isChecked(),
            karras=spec.karras and self.karras.isChecked(),
        )

    def _check_common(self) -> None:
        """Steps, spacing and Karras as core takes them: the config (default options) and,
        with a model, the sampler (1 <= steps <= T)."""
        config = self._common_config()
        if self._schedule is not None:
            make_sampler(config, self._schedule, self._prediction_type)

    def _check_options(self, kind: str) -> None:
        """One sampler's options as core takes them (SamplerConfig checks them)."""
        SamplerConfig(kind=kind, options=self.options(kind))

    def _recheck_all(self) -> None:
        self.fields.recheck()
        check = self.option_checks[self.spec.name]
        for field in check.fields:
            check.recheck(field)
        if not check.fields:
            check.recheck()

    def _on_kind_changed(self, _index: int = 0) -> None:
        spec = self.spec
        self.kind.setToolTip(f"{spec.label}: {spec.help}")
        for name, page in self.pages.items():
            page.setVisible(name == spec.name)
        self._common_form.setRowVisible(self.karras, spec.karras)
        if not self._updating:
            # a sampler the user picks comes with its own Karras default (Heun: on)
            self.karras.setChecked(spec.default_karras)
            self._recheck_all()

    def _emit_changed(self) -> None:
        if not self._updating:
            self.changed.emit()

    # ------------------------------------------------------------------ settings

    def state(self) -> dict[str, Any]:
        """What the settings file keeps: the chosen sampler's settings and every sampler's
        option values (as shown, even when refused)."""
        return {
            "kind": self.spec.name,
            "num_inference_steps": self.steps.value(),
            "spacing": self.spacing.currentData(),
            "clip_sample": self.clip_x0.isChecked(),
            "karras": self.karras.isChecked(),
            "options": {kind: self.options(kind) for kind in self.option_widgets},
        }

    def restore(self, state: object) -> list[str]:
        """Put a saved `state` back. What no longer fits (a sampler or option that is no
        longer registered, a value of the wrong type) is skipped and the form keeps its
        current value; returns what was skipped, for the log."""
        skipped: list[str] = []
        if not isinstance(state, dict):
            return ["the saved sampler settings are not a table"]
        self._updating = True
        try:
            kind = state.get("kind")
            if kind is not None and not set_combo_data(self.kind, kind):
                other = REGISTRY.get(kind) if isinstance(kind, str) else None
                skipped.append(
                    f"sampler {kind!r} (it samples {other.objective} models, the model is "
                    f"{self.objective})"
                    if other is not None
                    else f"sampler {kind!r} (no longer available)"
                )
            steps = state.get("num_inference_steps")
            if isinstance(steps, int) and not isinstance(steps, bool):
                self.steps.setValue(steps)
            spacing = state.get("spacing")
            if spacing is not None and not set_combo_data(self.spacing, spacing):
                skipped.append(f"spacing {spacing!r}")
            for key, box in (("clip_sample", self.clip_x0), ("karras", self.karras)):
                if isinstance(state.get(key), bool):
                    box.setChecked(state[key])
            options = state.get("options")
            for kind_name, values in (options if isinstance(options, dict) else {}).items():
                widgets = self.option_widgets.get(kind_name)
                if widgets is None or not isinstance(values, dict):
                    continue
                for name, value in values.items():
                    if name not in widgets or not set_widget_value(widgets[name], value):
                        skipped.append(f"{kind_name} {name} = {value!r}")
        finally:
            self._updating = False
        self._on_kind_changed()
        self.changed.emit()
        return skipped
