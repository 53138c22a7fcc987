"""The rangers' web page served by the base station (``camtrap station``).

Server-rendered pages (Starlette + Jinja2), live alerts over server-sent events, sessions in a
signed cookie and accounts in the station's own ``ranger.db``. No build step and nothing from
outside the station: a park's base station is often offline.
"""
