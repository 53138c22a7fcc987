"""Phone notifications for rangers when a trap raises an alert (Apprise: Telegram, mail, ntfy…).

:mod:`.config` parses the station's ``[notify]`` section, :mod:`.policy` decides who hears
about an alert and when (pure, clock-free), :mod:`.message` words it, and :mod:`.sender` sends
it through Apprise on its own thread. The station's ingest calls
:meth:`edge_app.station.notify.sender.Notifier.alert`.

Nothing is imported here on purpose: only :mod:`.sender` needs Apprise (the optional
``station`` extra), so ``check-config`` can validate a ``[notify]`` section through
:mod:`.config` on a machine without it.
"""
