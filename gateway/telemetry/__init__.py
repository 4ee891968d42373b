"""What the node tells about itself: logs (credentials scrubbed), live counters, Prometheus
series, the activity the status page shows.
"""
