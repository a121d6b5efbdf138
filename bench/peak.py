"""Peak memory of a benchmark's child process, as source to put at the top of its script.

On Linux ``ru_maxrss`` is kept across fork and exec, so a child started by a parent that
once held a lot of memory (a corpus it wrote, a loopback server's log of requests) reports
the parent's peak, not its own. ``VmHWM`` in /proc/self/status belongs to the process image
alone.
"""

PEAK_RSS = '''
def peak_rss_mb():
    """Peak resident memory of this process, in MB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
'''
