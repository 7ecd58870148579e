"""The four panels of the main window, one module and class each."""
