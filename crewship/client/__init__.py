"""The ``crewship`` client: ``crewship deploy ...`` and friends, run in a CrewAI project.

    parser.py    argparse for the client's subcommands, and their dispatch
    commands.py  deploy create|push|status|logs|list|remove|validate
    manage.py    config, releases, rollback, restart, scale, kickoff, keys, token, remote
    context.py   Client (project, server, one SSH session) and Console (the only output)
    project.py   app name from pyproject.toml, .env parsing, findings (pure)
    remote.py    server URL and where it is configured; git helpers
    ssh.py       paramiko: keys and agent, known_hosts (accept-new), exec and stream
    gitssh.py    an ``ssh`` stand-in for git, so pushes use the same connection code
    errors.py    the client's errors, each saying what to do
"""
