"""Open a dqd_results.json in the official DQD viewer (headless Chromium) and print what the viewer shows.

    python benchmarks/dqd_viewer_check.py --dqd ~/src/DataQualityDashboard --results qa/site_a/dqd_results.json

The viewer's static page (``inst/shinyApps/www``) is copied to a temporary folder with the results as
``results.json``; it expects jQuery from Shiny, so a local jQuery is added (``--jquery``, default the Debian
package's). A probe script, added to the copy only, writes the number of rows in the viewer's results table, the
CDM source name and the cells of its pass/fail overview into the page title, which Chromium dumps.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_PROBE = """<script>
window.onerror = function (m) { document.title = 'JSERROR ' + m; };
setTimeout(function () {
  var dash = document.querySelector('dq-dashboard').shadowRoot;
  var cells = Array.from(dash.querySelectorAll('td')).map(function (c) { return c.textContent.trim(); });
  document.title = 'ROWS ' + $('#dt-results').DataTable().rows().count() + ' SOURCE ' + $('cdm-source-name').text()
    + ' OVERVIEW ' + cells.join('|');
}, 4000);
</script></body>"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dqd", type=Path, required=True, help="a clone of OHDSI/DataQualityDashboard")
    parser.add_argument("--results", type=Path, required=True, help="dqd_results.json written by fedomop validate")
    parser.add_argument("--jquery", type=Path, default=Path("/usr/share/javascript/jquery/jquery.min.js"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        www = Path(tmp) / "www"
        shutil.copytree(args.dqd / "inst" / "shinyApps" / "www", www)
        shutil.copy(args.results, www / "results.json")
        shutil.copy(args.jquery, www / "jquery.min.js")
        index = www / "index.html"
        page = index.read_text(encoding="utf-8").replace("</body>", _PROBE)
        index.write_text('<script src="jquery.min.js"></script>\n' + page, encoding="utf-8")
        command = [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                   f"--user-data-dir={Path(tmp) / 'profile'}", "--virtual-time-budget=20000", "--dump-dom",
                   index.resolve().as_uri()]  # fmt: skip
        dom = subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout
    title = re.search(r"<title>([^<]*)</title>", dom)
    shown = title[1] if title else "(no title)"
    print(shown)
    return 0 if shown.startswith("ROWS ") else 1


if __name__ == "__main__":
    sys.exit(main())
