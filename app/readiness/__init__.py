"""The readiness report per capability, the diagnostics view, and the runtime window they use.

``ReadinessService`` (service.py) decides; ``checks.py`` holds each check; ``reasons.py`` the
reason codes with their fixes; ``text.py`` the copyable report; ``diagnostics.py`` the
``/v1/diagnostics`` body; ``runtime_view.py`` the protocol the local runtime is seen through.
"""
