"""The long-running balancer service: backend -> collect -> decide -> executor.

:class:`balancer.service.runtime.Runtime` wires it from the settings; ``balancer serve`` runs it
(:mod:`balancer.service.runner`). See docs/service.md.
"""
