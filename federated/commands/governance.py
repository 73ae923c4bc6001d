"""``fedomop governance ...`` and ``fedomop certs create|issue``: thin commands over fedomop.federated.governance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    governance_app = typer.Typer(help="Site governance: approved code, policies, audit log.", no_args_is_help=True)
    certs_app = typer.Typer(
        help="TLS certificates and SuperNode keys for tests and small deployments.", no_args_is_help=True
    )

    @governance_app.command("hash")
    def hash_command(
        path: Annotated[Path, typer.Argument(help="App directory, .fab/zip bundle, or model code directory.")],
        study: Annotated[Path | None, typer.Option(help="Hash this study file together with the code.")] = None,
        fab: Annotated[
            bool,
            typer.Option(
                "--fab",
                help="Hash the bundle `flwr run` builds from this app directory: the app_sha256 of an executor "
                "approval (federated/executor.py).",
            ),
        ] = False,
    ) -> None:
        """Print the sha256 a site puts in its policy's approved_apps (or, with --fab, in its approvals)."""
        from fedomop.federated.governance.hashing import app_hash, study_app_hash

        if fab:
            from fedomop.federated.governance.approval import fab_hash

            print(fab_hash(path))
            return
        print(study_app_hash(study, path) if study else app_hash(path))

    @governance_app.command("study-digest")
    def study_digest_command(
        study: Annotated[Path, typer.Argument(help="Study YAML.")],
    ) -> None:
        """Print the study_digest a site puts in an approval (any change but name, description and labels changes it)."""
        from fedomop.federated.governance.approval import study_digest
        from fedomop.federated.study import load_study

        print(study_digest(load_study(study)))

    @governance_app.command("check-policy")
    def check_policy(policy: Annotated[Path, typer.Argument(help="Site policy YAML.")]) -> None:
        """Validate a site policy and summarise what it allows."""
        from fedomop.federated.governance.policy import load_policy

        loaded = load_policy(policy)
        console.print(f"policy of site {loaded.site!r} is valid; audit log: {loaded.audit_log}")
        for name, study in loaded.studies.items():
            console.print(
                f"  {name}: {len(study.approvals)} approval(s) (app + study + requester), "
                f"{len(study.approved_apps)} approved app hash(es), tables {', '.join(study.tables) or 'none'}, "
                f"{len(study.concept_sets)} concept(s), min cohort {loaded.min_cohort(name)}, "
                f"small cells < {loaded.small_cell(name)}"
                + (f", local DP epsilon={study.differential_privacy.epsilon}" if study.differential_privacy else "")
            )
            if not study.approvals:
                console.print(
                    f"  [yellow]warning[/]: study {name!r} has no approvals: a governed site (fedomop site start) "
                    "refuses every run of it; add approvals: [{app_sha256, study_digest, requester}]"
                )

    @governance_app.command("verify-log")
    def verify_log(
        log: Annotated[Path, typer.Argument(help="Audit log (JSON lines).")],
        head: Annotated[
            str | None,
            typer.Option(help="Published head: a hash, or a result.json / model_card.json holding this site's head."),
        ] = None,
    ) -> None:
        """Check the audit log's hash chain; exit 1 if it was edited, reordered or truncated."""
        from fedomop.federated.governance.auditlog import verify
        from fedomop.federated.governance.startup import published_head

        expected = published_head(head, log) if head else None
        result = verify(log, expected_head=expected)
        if result.ok:
            console.print(f"ok: {result.records} records, head {result.head}")
            if expected is None:
                console.print(
                    "not anchored: without --head a log rewritten together with its head file also passes; "
                    "pass the head published in result.json or model_card.json",
                    highlight=False,
                )
            return
        for problem in result.problems:
            console.print(f"[red]{problem}[/]", highlight=False)
        raise typer.Exit(1)

    @certs_app.command("create")
    def create(
        out: Annotated[Path, typer.Option(help="Empty folder for the CA, server certificate and site keys.")],
        sites: Annotated[int | None, typer.Option(help="Number of sites (named site_1 ... site_N).")] = None,
        site: Annotated[list[str] | None, typer.Option(help="Site name (repeatable); overrides --sites.")] = None,
        host: Annotated[
            list[str] | None, typer.Option(help="SuperLink host name/IP for the certificate (repeatable).")
        ] = None,
        days: Annotated[int, typer.Option(help="Validity in days.")] = 825,
    ) -> None:
        """Create a CA, a SuperLink TLS certificate and one ECDSA P-256 key pair per site."""
        from fedomop.federated.governance.certs import DEFAULT_HOSTS, create_credentials, site_names

        names = site_names(sites, site)
        credentials = create_credentials(out, names, hosts=tuple(host or DEFAULT_HOSTS), days=days)
        console.print(f"CA: {credentials.ca_cert}\nSuperLink: {credentials.server_cert}, {credentials.server_key}")
        for name in names:
            console.print(
                f"{name}: {credentials.site_private_keys[name]} (keep at the site), {credentials.site_public_keys[name]}"
            )
        console.print(
            "SuperLink: flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key "
            "--enable-supernode-auth; then `flwr supernode register <site>.pub` for each site."
        )

    @certs_app.command("issue")
    def issue(
        certs: Annotated[Path, typer.Option(help="The `fedomop certs create` folder holding ca.crt and ca.key.")],
        name: Annotated[str, typer.Option(help="The person's name: the requester in audit logs and model cards.")],
        role: Annotated[
            str, typer.Option(help="researcher (submit, list, stop runs) | operator (also register nodes).")
        ],
        days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
    ) -> None:
        """Issue a person's client certificate (CN = name, OU = role) for the hub's mTLS gate."""
        from fedomop.federated.governance.certs import issue_user_cert

        cert, key = issue_user_cert(certs, role, name, days=days)
        console.print(f"{name} ({role}): {cert}, {key} (give both to {name}, with ca.crt)", highlight=False)
        console.print(
            f"{name} connects with: fedomop hub connect --gate HUB:PORT --cert {cert.name} --key {key.name} --ca ca.crt",
            highlight=False,
        )

    app.add_typer(governance_app, name="governance")
    app.add_typer(certs_app, name="certs")
