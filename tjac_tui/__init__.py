"""tjac's faces: the Textual workbench and the headless ``tjac`` command. Reads what
:mod:`engine` writes; computes nothing the engine does not."""
