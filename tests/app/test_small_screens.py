"""Issue 14, small screens and the mouse wheel: at 1280x720 and 1366x768 (the window maximised:
the screen less a title bar) the Playback and Forward tabs keep their primary actions on
screen without scrolling, Playback does not scroll at the default size, and a wheel turned over
a field that has no focus scrolls the panel instead of changing the value."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, QPointF, QRect, QSize, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QScrollArea, QScrollBar, QWidget

from diffusion_studio.app.panels.playback_panel import PlaybackPanel

TITLE_BAR = 40  # a window manager's title bar: what a maximised window loses of the screen
SCREENS = [(1280, 720), (1366, 768)]


def visible_rect(widget, window) -> QRect:
    """The part of `widget` on screen inside `window`: clipped by every scroll area's viewport
    it sits in and by the window itself."""
    top_left = widget.mapTo(window, QPoint(0, 0))
    rect = QRect(top_left, widget.size())
    parent = widget.parentWidget()
    while parent is not None and parent is not window:
        if isinstance(parent, QScrollArea):
            viewport = parent.viewport()
            rect = rect.intersected(QRect(viewport.mapTo(window, QPoint(0, 0)), viewport.size()))
        parent = parent.parentWidget()
    return rect.intersected(window.rect())


def assert_on_screen(window, *widgets) -> None:
    for widget in widgets:
        assert widget.isVisible(), widget
        whole = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
        assert visible_rect(widget, window) == whole, (
            f"{widget.objectName() or type(widget).__name__} "
            f"{getattr(widget, 'text', lambda: '')()!r} is cut off or scrolled away"
        )


def settings_scroll(panel) -> QScrollArea:
    return panel.findChildren(QScrollArea)[0]


@pytest.fixture
def at_size(window, qtbot):
    def resize(width: int, height: int):
        window.resize(width, height)
        qtbot.waitUntil(lambda: window.size().width() == width, timeout=2000)
        QApplication.processEvents()
        return window

    return resize


@pytest.mark.parametrize("screen", SCREENS, ids=[f"{w}x{h}" for w, h in SCREENS])
def test_playback_actions_are_on_screen(at_size, screen, checkpoints, qtbot):
    window = at_size(screen[0], screen[1] - TITLE_BAR)
    panel = window.playback
    window.tabs.setCurrentWidget(panel)
    assert panel.load_checkpoint(checkpoints.images)
    QApplication.processEvents()
    assert window.size().height() == screen[1] - TITLE_BAR  # nothing forced the window taller
    assert_on_screen(
        window,
        panel.sample_button,
        panel.cancel_button,
        panel.play_button,
        panel.back_button,
        panel.forward_button,
        panel.scrub,
        panel.frame_label,
        panel.gif_button,
        panel.png_button,
    )
    assert panel.views.height() >= 250  # the pictures keep their room


def test_playback_does_not_scroll_at_the_default_size(window, checkpoints):
    panel = window.playback
    window.tabs.setCurrentWidget(panel)
    assert panel.load_checkpoint(checkpoints.conditional)  # the longest model description
    QApplication.processEvents()
    assert window.size().width() == 1360 and window.size().height() == 860
    assert settings_scroll(panel).verticalScrollBar().maximum() == 0


@pytest.mark.parametrize("screen", SCREENS, ids=[f"{w}x{h}" for w, h in SCREENS])
def test_forward_actions_and_readout_are_on_screen(at_size, screen):
    window = at_size(screen[0], screen[1] - TITLE_BAR)
    panel = window.forward
    window.tabs.setCurrentWidget(panel)
    QApplication.processEvents()
    assert_on_screen(
        window, panel.slider, panel.play_button, panel.t_label, panel.numbers, panel.gif_button
    )
    assert panel.numbers.sizeHint().width() <= panel.numbers.width()  # SNR not cut off
    assert panel.view.height() >= 250 and panel.hist.height() >= 250


def wheel(widget, delta: int = -120) -> QWheelEvent:
    """One notch of the mouse wheel over the middle of `widget` (delivered to it alone: Qt
    passes a real wheel event that a widget leaves unaccepted on to its parents)."""
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(
        centre,
        QPointF(widget.mapToGlobal(centre.toPoint())),
        QPoint(0, 0),
        QPoint(0, delta),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, event)
    return event


def test_wheel_over_an_unfocused_field_scrolls_the_panel(show, checkpoints, qtbot):
    panel = show(PlaybackPanel())
    panel.resize(1000, 380)  # short: the settings scroll
    assert panel.load_checkpoint(checkpoints.images)
    QApplication.processEvents()
    scroll = settings_scroll(panel)
    bar = scroll.verticalScrollBar()
    assert bar.maximum() > 0
    for field in (panel.num_steps, panel.seed, panel.sampler_kind, panel.guidance, panel.scrub):
        assert field.focusPolicy() == Qt.FocusPolicy.StrongFocus
    steps, kind = panel.num_steps.value(), panel.sampler_kind.currentIndex()
    bar.setValue(0)
    for field in (panel.num_steps, panel.sampler_kind):
        event = wheel(field)
        assert not event.isAccepted()  # left for the parents: Qt offers it to the scroll area
    assert panel.num_steps.value() == steps and panel.sampler_kind.currentIndex() == kind
    assert wheel(scroll.viewport()).isAccepted() and bar.value() > 0  # where it goes: scrolls
    panel.num_steps.setFocus()  # clicked or tabbed into: now the wheel is the field's
    qtbot.waitUntil(panel.num_steps.hasFocus, timeout=2000)
    wheel(panel.num_steps, +120)
    assert panel.num_steps.value() == steps + 1


def test_every_field_of_every_panel_ignores_the_wheel_unless_focused(window):
    """Fields made by app.widgets' helpers (all panels) and the panels' own combo boxes and
    sliders carry the wheel guard."""
    from diffusion_studio.app.widgets import GUARDED_FIELDS

    unguarded = [
        f"{panel.title}: {type(w).__name__} {w.toolTip()[:40]!r}"
        for panel in window.panels
        for w in panel.findChildren(QWidget)
        if isinstance(w, GUARDED_FIELDS)
        and not isinstance(w, QScrollBar)
        and w.focusPolicy() != Qt.FocusPolicy.StrongFocus
        and w.isVisibleTo(panel)
    ]
    assert unguarded == []


@pytest.mark.parametrize("screen", SCREENS, ids=[f"{w}x{h}" for w, h in SCREENS])
def test_sampler_lab_actions_are_on_screen(at_size, screen, checkpoints, qtbot):
    """The Lab with four samplers (the longest settings column) keeps Sample, Cancel, the
    lockstep bar, the exports and the convergence buttons on screen; the views keep room."""
    window = at_size(screen[0], screen[1] - TITLE_BAR)
    assert window.playback.load_checkpoint(checkpoints.conditional)  # guided: longest captions
    panel = window.lab
    window.tabs.setCurrentWidget(panel)
    while panel.add_column() is not None:
        pass
    panel.num_samples.setValue(2)
    panel.guidance.setValue(3.0)
    for column in panel.columns:
        column.form.steps.setValue(2)
    with qtbot.waitSignal(panel.runner.finished, timeout=60000):
        assert panel.start_sampling()  # the captions (evaluations, summaries) are filled in
    panel.runner.wait(10)
    QApplication.processEvents()
    assert window.size() == QSize(screen[0], screen[1] - TITLE_BAR)  # nothing forced it larger
    assert_on_screen(
        window,
        panel.sample_button,
        panel.cancel_button,
        panel.add_button,
        panel.remove_button,
        panel.play_button,
        panel.scrub,
        panel.png_button,
        panel.gif_button,
    )
    assert panel.side_page.height() >= 250
    for column in panel.columns:
        assert column.image.width() >= 100 and column.image.height() >= 150
    panel.view_tabs.setCurrentIndex(2)
    QApplication.processEvents()
    assert_on_screen(window, panel.conv_button, panel.conv_cancel, panel.csv_button)
    assert panel.conv_plot.height() >= 200
