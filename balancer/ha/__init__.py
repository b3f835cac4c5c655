"""High availability: cluster leases with fencing tokens on PostgreSQL, leader election per
cluster, failover that carries on the work from the journal (docs/deployment.md).

* :mod:`balancer.ha.lease` -- acquire / renew / release on the database's clock.
* :mod:`balancer.ha.fence` -- the trigger that refuses writes from an old epoch.
* :mod:`balancer.ha.node` -- one instance: a seat per cluster, elected or standing by.
"""
