"""The request pipeline: one module per stage (context, errors, target, access, body,
usage, admission, proxy) and the relay of the answer back. app.py orders them.
"""
