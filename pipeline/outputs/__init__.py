"""Where the loop's messages and frames go: the dispatcher (publisher first, then its copies), MQTT copy,
recordings, live-view previews and the Prometheus metrics.
"""
