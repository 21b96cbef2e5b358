"""``hpcinsight serve``: the Insight API, the live feed and the unit view.

``state`` keeps the live cluster state (last sample per GPU, open anomalies, latest quantiles and
KPIs) from the topics; ``feed`` fills it from Kafka; ``app`` serves it (REST with OpenAPI, one
Server-Sent Events stream per view, the static page in ``static/``).
"""
