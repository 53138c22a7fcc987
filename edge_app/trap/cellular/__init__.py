"""The cellular (LTE) link: ModemManager over D-Bus, when the bearer is up, the data plan.

* :mod:`.config`: the ``[cellular]`` section.
* :mod:`.policy`: when the bearer should be up (pure, clock-driven).
* :mod:`.budget`: the SIM's monthly plan (pure, wall-clock driven, saved as JSON).
* :mod:`.modem`: the thin D-Bus adapter to ModemManager.
* :mod:`.link`: one step joining them (observe, count, decide, act), for the daemon's worker.
* :mod:`.stage`: the daemon's stage running the link (sleeps until the next check, a
  ModemManager change or a wake from the store), and the data plan's word to the MQTT link.
"""
