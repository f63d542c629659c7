"""The dashboard's own code, beside `dashboard.py`: `ui` (the state the pages share) and `plotly_component` (charts
updated in place). The pages in app_pages/ import them as `from app import ui`."""
