"""What the node serves beside the API: probes, /metrics, the API document, sign-in and the
status page, the phone onboarding page.
"""
