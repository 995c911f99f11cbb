"""`fdn-index serve`: a warm query service over one index, with a JSON API and a viewer page.

`QueryService` (service.py) holds the open index and answers every request; `create_app`
(app.py) puts Starlette routes in front of it; `SliceImages` (images.py) draws slices from the
index's archive folders and nowhere else. `guard.py` decides who may talk to it (Host, origin of
a POST, token; `login.py` signs a browser in), `uploads.py` receives an upload within its limits,
`public_paths.py` keeps absolute paths out of answers. The page's assets are in `static/`.
"""

from fdn.service.app import create_app
from fdn.service.service import QueryService

__all__ = ["QueryService", "create_app"]
