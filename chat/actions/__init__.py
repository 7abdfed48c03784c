"""What the app does, as synchronous, transactional functions named for it, one module per
subject: accepting replies, their progress and end, titles, versions, shares, presets, the
catalogue. Async code calls these through `database_sync_to_async`, once per logical operation.
"""
