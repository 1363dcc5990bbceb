"""
`meson install` into a DESTDIR, as a distribution package or an operator
would run it (prefix /usr, sysconfdir /etc, man pages required), and the
man pages it installs: they render without warnings, relabel(8) documents
every option of the binary, and relabel.ini(5) documents every key the
configuration parser accepts and every key of the example configuration,
in the right section.  The keys are read from src/config.c and
config/relabel.ini at test time, so a key added anywhere without its
documentation fails here.
"""

import os
import re
import subprocess

import ship
from conftest import run

VERSION_RE = re.compile(r"^\s*version\s*:\s*'([^']+)'", re.M)


def page(dest, name):
    section = name.rsplit(".", 1)[1]
    return os.path.join(dest, "usr", "share", "man", "man" + section, name)


def test_install_puts_every_file_in_place(installed):
    binary = os.path.join(installed, "usr", "sbin", "relabel")
    assert os.access(binary, os.X_OK)
    version = VERSION_RE.search(open(os.path.join(ship.REPO, "meson.build")).read()).group(1)
    assert run(binary, "--version").stdout.strip() == f"relabel {version}"

    example = open(os.path.join(ship.REPO, "config", "relabel.ini")).read()
    conf = os.path.join(installed, "etc", "relabel", "relabel.ini")
    assert open(conf).read() == example
    assert oct(os.stat(conf).st_mode & 0o777) == "0o644"
    doc = os.path.join(installed, "usr", "share", "doc", "relabel", "relabel.ini.example")
    assert open(doc).read() == example

    unit = open(os.path.join(installed, "usr", "lib", "systemd", "system", "relabel.service")).read()
    assert not re.search(r"@[A-Z_]+@", unit), "every @VARIABLE@ of the template is filled in"
    assert "ExecStart=/usr/sbin/relabel -c /etc/relabel/relabel.ini\n" in unit
    sysusers = open(os.path.join(installed, "usr", "lib", "sysusers.d", "relabel.conf")).read()
    assert re.search(r"^u relabel ", sysusers, re.M)

    for name in ("relabel.8", "relabel.ini.5"):
        assert os.path.getsize(page(installed, name)) > 1000, name


def test_reinstall_keeps_an_edited_configuration(installed, tmp_path_factory):
    conf = os.path.join(installed, "etc", "relabel", "relabel.ini")
    build = os.path.join(os.path.dirname(installed), "build")
    with open(conf, "a") as f:
        f.write("; edited by the operator\n")
    edited = open(conf).read()
    run("meson", "install", "-C", build, "--no-rebuild", "--destdir", installed)
    assert open(conf).read() == edited
    # The new example still arrives with the documentation.
    doc = os.path.join(installed, "usr", "share", "doc", "relabel", "relabel.ini.example")
    assert "edited by the operator" not in open(doc).read()


def test_default_prefix_paths_follow_the_prefix(tmp_path):
    """A plain `meson setup` installs below /usr/local; the unit must then
    start that binary with that configuration (configure time, no build)."""
    build = str(tmp_path / "build")
    run("meson", "setup", build, ship.REPO, "-Dman=disabled")
    unit = open(os.path.join(build, "relabel.service")).read()
    assert "ExecStart=/usr/local/sbin/relabel -c /usr/local/etc/relabel/relabel.ini\n" in unit
    intro = run("meson", "introspect", build, "--installed").stdout
    assert "/usr/local/lib/systemd/system/relabel.service" in intro
    assert "/usr/local/sbin/relabel" in intro


def test_man_pages_render_without_warnings(installed):
    for name, title in (("relabel.8", "relabel - a branded TLS front end"),
                        ("relabel.ini.5", "relabel.ini - configuration file of relabel(8)")):
        res = subprocess.run(["man", "--warnings", "-l", page(installed, name)],
                             capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, MANWIDTH="80"))
        assert res.returncode == 0 and res.stderr == "", f"{name}: {res.stderr}"
        assert title in re.sub(r"\s+", " ", res.stdout), name


def roff_sections(path):
    """{.SH title: body} of a man page's roff source."""
    out, title = {}, None
    for line in open(path, encoding="utf-8"):
        if line.startswith(".SH "):
            title = line[4:].strip().strip('"')
            out[title] = ""
        elif title is not None:
            out[title] += line
    return out


def documented_keys(path):
    """{(section type, key)} of relabel.ini(5): a key is documented by a
    term line "KEY = ..." (bold key) in the chapter of its section type."""
    found = set()
    for title, body in roff_sections(path).items():
        m = re.search(r"\[(\w+)\]", title)
        if m:
            for key in re.findall(r"^\\fB([a-z_]+)\\fR = ", body, re.M):
                found.add((m.group(1), key))
    return found


def test_relabel_ini_5_documents_every_key(installed):
    documented = documented_keys(page(installed, "relabel.ini.5"))
    parser = ship.parser_directives()
    example = ship.example_keys()
    assert len(parser) >= 40 and len(example) >= 40, "the readers found the tables"
    missing = sorted((parser | example) - documented)
    assert not missing, f"keys without a '*key* = ...' entry in their section of " \
                        f"doc/relabel.ini.5.scd: {missing}"
    stale = sorted(documented - parser)
    assert not stale, f"relabel.ini(5) documents keys the parser does not accept: {stale}"
    # And the example configuration shows every key the parser accepts.
    assert not sorted(parser - example), "config/relabel.ini lacks keys"


def test_relabel_8_documents_every_option(installed):
    main_c = open(os.path.join(ship.REPO, "src", "main.c")).read()
    usage = re.search(r"main_usage\(FILE \*out\)\s*\{(.*?)\n\}", main_c, re.S).group(1)
    options = re.findall(r'"\s+(-\w), (--[a-z-]+)', usage)
    assert len(options) >= 4, "the usage text of src/main.c was found"
    options_chapter = roff_sections(page(installed, "relabel.8"))["OPTIONS"]
    for short, long in options:
        # roff escapes '-' as '\-' in places; compare the text.
        text = options_chapter.replace("\\-", "-").replace("\\fB", "").replace("\\fR", "")
        assert re.search(rf"^{re.escape(short)}, {re.escape(long)}\b", text, re.M), \
            f"relabel(8) OPTIONS lacks {short}, {long}"
