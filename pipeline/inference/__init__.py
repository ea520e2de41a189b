"""The inference side of one box: VMP stage, clip windows, scheduler, postprocess, events, latency records and
the loop that runs them.
"""
