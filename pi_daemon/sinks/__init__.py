"""Where results go. Each sink runs on the dispatcher's thread, never the loop's."""
