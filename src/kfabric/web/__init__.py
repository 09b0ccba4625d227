"""The web portal: server-rendered pages in the ``kfabric serve`` process (``web/portal.py`` mounts them).

Pages call the same service functions as the API routers, as the same :class:`~kfabric.service.actors.Actor`
(a browser session stands for the token it signed in with), so roles and tenancy are the API's. One page is one
module under ``web/pages`` plus its templates; the layout, navigation, message catalog (``web/i18n.py``), session
and CSRF checks (``web/view.py``) and the table, paging and chart helpers (``web/tables.py``) are shared.
"""
