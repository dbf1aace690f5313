"""Anonymization in the import job and through REST: default site script, project scripts,
prevent_anon, refusals of scripts that do not parse, per-file failures."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from flask import Flask
from flask.testing import FlaskClient

from example_app.demo import write_session
from flask_dicom_inbox import InboxState

from .conftest import auth, run_worker, submit

IDENTIFYING = ("PatientName", "PatientID", "StudyDescription")


def _import(
    client: FlaskClient, app: Flask, folder: Path, user: str = "admin", **params: str
) -> dict:  # type: ignore[type-arg]
    response = submit(client, user=user, PROJECT_ID="test_proj", path=str(folder), **params)
    assert response.status_code == 200, response.get_data(as_text=True)
    url = response.get_data(as_text=True).strip()
    run_worker(app)
    status = client.get(url, headers=auth(user)).get_json()
    assert status["status"] == "Completed", (status["message"], status["errors"][:3])
    return status  # type: ignore[no-any-return]


def _outputs(state: InboxState) -> dict[str, Path]:
    return {p.name: p for p in state.config.prearchive_path.rglob("*.dcm")}


def test_default_site_script_sets_subject_session_project_only(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "anon1"
    generated = write_session(folder, series=2, files_per_series=2)
    _import(client, app, folder, SUBJECT_ID="subj01", EXPT_LABEL="sess01")
    outputs = _outputs(state)
    assert len(outputs) == 4
    for source in generated.files:
        before = pydicom.dcmread(source)
        after = pydicom.dcmread(outputs[source.name])
        assert str(after.PatientName) == "subj01"
        assert after.PatientID == "sess01"
        assert after.StudyDescription == "test_proj"
        assert after.PixelData == before.PixelData
        ignored = {
            "PatientName",
            "PatientID",
            "StudyDescription",
            "DeidentificationMethodCodeSequence",
            "PatientIdentityRemoved",
        }
        for elem in before:
            if elem.keyword in ignored:
                continue
            assert after[elem.tag] == elem, elem.keyword
        extra = {e.keyword for e in after} - {e.keyword for e in before}
        assert extra <= {"DeidentificationMethodCodeSequence", "PatientIdentityRemoved"}
        [item] = after.DeidentificationMethodCodeSequence
        assert item.CodeValue == "site"
        assert item.CodeMeaning == "XNAT DicomEdit 6 Script"
        assert item.CodingSchemeDesignator == "XNAT"
        assert item.CodingSchemeVersion == "1.0"
        assert after.preamble == b"\x00" * 128


def test_project_script_set_by_put_runs_after_the_site_script(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    script = (
        'version "6.1"\n- (0010,0030)\n(0008,0080) := "Anon Hospital"\n'
        "(0020,000D) := hashUID[(0020,000D)]\n"
    )
    put = client.put(
        "/xapi/anonymize/projects/test_proj",
        data=script,
        headers={**auth("owner"), "Content-Type": "text/plain"},
    )
    assert put.status_code == 200, put.get_data(as_text=True)
    got = client.get("/xapi/anonymize/projects/test_proj", headers=auth("owner"))
    assert got.get_data(as_text=True) == script
    assert (
        client.get("/xapi/anonymize/projects/test_proj/enabled", headers=auth("owner")).get_json()
        is True
    )
    folder = inbox / "test_proj" / "anon2"
    generated = write_session(folder, series=1, files_per_series=2)
    _import(client, app, folder, SUBJECT_ID="s2", EXPT_LABEL="e2")
    first_uids = set()
    for source in generated.files:
        after = pydicom.dcmread(_outputs(state)[source.name])
        assert "PatientBirthDate" not in after
        assert after.InstitutionName == "Anon Hospital"
        assert str(after.PatientName) == "s2"
        assert after.StudyInstanceUID != generated.study_instance_uid
        assert re.fullmatch(r"2\.25\.\d+", after.StudyInstanceUID)
        first_uids.add(after.StudyInstanceUID)
        assert [i.CodeValue for i in after.DeidentificationMethodCodeSequence] == [
            "site",
            "project",
        ]
    assert len(first_uids) == 1, "one study stays one study"
    # Re-import of the same input gives the same hashed UID.
    again = inbox / "test_proj" / "anon2b"
    write_session(again, series=1, files_per_series=2)
    status = _import(client, app, again, SUBJECT_ID="s2", EXPT_LABEL="e2b")
    assert status["sessions"][0]["studyInstanceUid"] == generated.study_instance_uid
    later = [p for p in state.config.prearchive_path.rglob("*.dcm") if "e2b" in p.parts]
    assert {pydicom.dcmread(p).StudyInstanceUID for p in later} == first_uids
    # Switched off, the project script no longer runs.
    off = client.put(
        "/xapi/anonymize/projects/test_proj/enabled", data="false", headers=auth("owner")
    )
    assert off.status_code == 200 and off.get_json() is False
    third = inbox / "test_proj" / "anon2c"
    write_session(third, series=1, files_per_series=1)
    _import(client, app, third, SUBJECT_ID="s3", EXPT_LABEL="e3")
    [out] = [p for p in state.config.prearchive_path.rglob("*.dcm") if "e3" in p.parts]
    assert pydicom.dcmread(out).InstitutionName == "Demo Hospital"


def test_script_that_does_not_parse_is_refused_and_old_stays(client: FlaskClient) -> None:
    good = 'version "6.1"\n(0010,0010) := "x"\n'
    assert client.put("/xapi/anonymize/site", data=good, headers=auth()).status_code == 200
    bad = 'version "6.1"\n(0010,0010) := "x"\n(0010,00ZZ) := "y"\n'
    response = client.put("/xapi/anonymize/site", data=bad, headers=auth())
    assert response.status_code == 400
    body = response.get_json()
    assert "line 3" in body["message"] and "column" in body["message"]
    assert body["errors"]["line"] == ["3"]
    assert client.get("/xapi/anonymize/site", headers=auth()).get_data(as_text=True) == good


def test_site_script_defaults_to_xnats_and_only_admins_touch_it(client: FlaskClient) -> None:
    text = client.get("/xapi/anonymize/site", headers=auth()).get_data(as_text=True)
    assert "(0010,0010) := subject" in text and 'project != "Unassigned"' in text
    assert client.get("/xapi/anonymize/site/enabled", headers=auth()).get_json() is True
    assert client.get("/xapi/anonymize/site", headers=auth("owner")).status_code == 403
    assert client.put("/xapi/anonymize/site", data="", headers=auth("owner")).status_code == 403
    assert (
        client.put(
            "/xapi/anonymize/projects/test_proj", data="", headers=auth("member")
        ).status_code
        == 403
    )
    assert client.get("/xapi/anonymize/projects/nosuch", headers=auth()).status_code == 404
    bad = client.put("/xapi/anonymize/site/enabled", data="perhaps", headers=auth())
    assert bad.status_code == 400


def test_site_script_switched_off_copies_files_unchanged(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    assert (
        client.put("/xapi/anonymize/site/enabled?enable=false", headers=auth()).get_json() is False
    )
    folder = inbox / "test_proj" / "noanon"
    generated = write_session(folder, series=1, files_per_series=2)
    _import(client, app, folder, SUBJECT_ID="s4", EXPT_LABEL="e4")
    for source in generated.files:
        assert _outputs(state)[source.name].read_bytes() == source.read_bytes()


def test_prevent_anon_keeps_files_byte_identical(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "prevent"
    generated = write_session(folder, series=1, files_per_series=2)
    _import(
        client, app, folder, user="owner", SUBJECT_ID="s5", EXPT_LABEL="e5", prevent_anon="true"
    )
    for source in generated.files:
        assert _outputs(state)[source.name].read_bytes() == source.read_bytes()


def test_a_file_the_script_cannot_process_fails_alone(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    folder = inbox / "test_proj" / "onebad"
    generated = write_session(folder, series=1, files_per_series=3, nested=False)
    # Truncate one file inside its pixel data: the header reads, the full read fails.
    broken = generated.files[1]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) - 3000])
    status = _import(client, app, folder, SUBJECT_ID="s6", EXPT_LABEL="e6")
    assert status["progress"]["filesImported"] == 2
    [error] = status["errors"]
    assert error["path"] == broken.name
    assert error["reason"].startswith("cannot process")
    assert "pixel data is truncated" in error["reason"]
    assert set(_outputs(state)) == {p.name for p in generated.files} - {broken.name}


def test_cli_sets_and_tests_scripts(app: Flask, tmp_path: Path, state: InboxState) -> None:
    runner = app.test_cli_runner()
    script = tmp_path / "site.das"
    script.write_text('version "6.1"\n(0010,0010) := subject\n')
    result = runner.invoke(args=["dicom-inbox", "anon", "set-site", str(script)])
    assert result.exit_code == 0, result.output
    assert state.anonymization.site_script().text == script.read_text()
    bad = tmp_path / "bad.das"
    bad.write_text('version "6.1"\n(0010,0010) = subject\n')
    refused = runner.invoke(args=["dicom-inbox", "anon", "set-project", "test_proj", str(bad)])
    assert refused.exit_code != 0
    assert "line 2" in refused.output
    assert state.anonymization.project_script("test_proj").text is None
    dicom_file = write_session(tmp_path / "one", series=1, files_per_series=1).files[0]
    tested = runner.invoke(
        args=["dicom-inbox", "anon", "test", str(script), str(dicom_file), "--subject", "SUBJ"]
    )
    assert tested.exit_code == 0, tested.output
    assert "(0010,0010)" in tested.output and "SUBJ" in tested.output
    assert pydicom.dcmread(dicom_file).PatientName == "Doe^Jane", "anon test writes nothing"
    link = tmp_path / "link.dcm"  # a link named on the command line is followed
    link.symlink_to(dicom_file)
    linked = runner.invoke(args=["dicom-inbox", "anon", "test", str(script), str(link)])
    assert linked.exit_code == 0, linked.output
    assert "(0010,0010)" in linked.output


def test_a_script_fault_on_one_file_fails_that_file_only(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    # Rows (US) cannot hold text: the script fails on instance 2 only.
    script = 'version "6.1"\n(0020,0013) = "2" ? (0028,0010) := "not-a-number"\n'
    put = client.put("/xapi/anonymize/projects/test_proj", data=script, headers=auth("owner"))
    assert put.status_code == 200
    folder = inbox / "test_proj" / "scriptfault"
    generated = write_session(folder, series=1, files_per_series=3, nested=False)
    status = _import(client, app, folder, SUBJECT_ID="s7", EXPT_LABEL="e7")
    assert status["progress"]["filesImported"] == 2
    [error] = status["errors"]
    assert error["path"] == generated.files[1].name
    assert error["reason"].startswith("cannot process: ValueError")
