"""dcmtk's Print Management tools as DIMSE-N peers: config, image and stop.

``dcmprscp`` (a Print SCP) and ``dcmprscu`` (the print spooler: an SCU that
sends N-GET, N-CREATE, N-SET, N-ACTION and N-DELETE, and answers an
N-EVENT-REPORT) read one ``dcmpstat.cfg``; :func:`write_config` writes a
minimal one (trimmed from the Debian package's) with a private database and
the ports and AE titles of one test. ``dcmpsprt`` turns an image into the
stored print job ``dcmprscu`` sends. Nothing here imports aiodicom.
"""

from __future__ import annotations

from pathlib import Path

#: DCMTK's private SOP class that makes ``dcmprscp`` exit when proposed.
SHUTDOWN_SOP_CLASS = "1.2.276.0.7230010.3.4.1915765545.18030.917282194.0"

_CONFIG = r"""[[GENERAL]]
[APPLICATION]
LogDirectory = {work}/log
LogFile = general.log
LogLevel = INFO
[PRINT]
Spooler = dcmprscu
Server = dcmprscp
Directory = {work}/spool
DetailedLog = true
BinaryLog = false
Sleep = 1
MinPrintResolution = 1024\1024
MaxPrintResolution = 8192\8192
DefaultIllumination = 2000
DefaultReflection = 10
DeletePrintJobs = false
AlwaysDeleteTerminateJobs = true
[DATABASE]
Directory = {work}/database
[LUT]
Directory = {work}/lut
[NETWORK]
aetitle = {calling}

[[COMMUNICATION]]
[LOCALSCP]
Aetitle = {scp_title}
Description = dcmprscp under test
Hostname = 127.0.0.1
Port = {scp_port}
Type = LOCALPRINTER
DisableNewVRs = false
DisplayFormat = 1,1\1,2\2,2
FilmDestination = MAGAZINE\PROCESSOR
FilmSizeID = 8INX10IN\14INX17IN
ImplicitOnly = false
MagnificationType = REPLICATE\BILINEAR\CUBIC\NONE
MaxDensity = 320
MinDensity = 20
MaxPDU = 32768
MediumType = PAPER\CLEAR FILM\BLUE FILM
OmitSOPClassUIDFromCreateResponse = false
PresentationLUTMatchRequired = false
PresentationLUTinFilmSession = false
ResolutionID = STANDARD\HIGH
SmoothingType = NONE
Supports12Bit = true
SupportsPresentationLUT = true

[REMOTE]
Aetitle = {printer_title}
Description = the Print SCP dcmprscu sends to
Hostname = 127.0.0.1
Port = {printer_port}
Type = PRINTER
DisableNewVRs = false
DisplayFormat = 1,1\1,2\2,2
FilmSizeID = 8INX10IN\14INX17IN
MagnificationType = REPLICATE\BILINEAR\CUBIC\NONE
MediumType = PAPER\CLEAR FILM\BLUE FILM
FilmDestination = MAGAZINE\PROCESSOR
ImplicitOnly = false
MaxPDU = 32768
SupportsPresentationLUT = false
SupportsAnnotation = false
Timeout = 10
Supports12Bit = true
"""


def write_config(
    work: Path,
    *,
    calling: str = "DCMPSTATE",
    scp_title: str = "PRTSCP",
    scp_port: int = 0,
    printer_title: str = "AIO_PRINT",
    printer_port: int = 0,
) -> Path:
    """A dcmpstat.cfg for one test, its directories made under ``work``.

    ``LOCALSCP`` is the ``dcmprscp`` to run (``-p LOCALSCP``); ``REMOTE`` the
    Print SCP that ``dcmpsprt``/``dcmprscu`` send to (``-p REMOTE``).
    """
    for name in ("database", "spool", "log", "lut"):
        (work / name).mkdir(parents=True, exist_ok=True)
    path = work / "dcmpstat.cfg"
    path.write_text(
        _CONFIG.format(
            work=work,
            calling=calling,
            scp_title=scp_title,
            scp_port=scp_port,
            printer_title=printer_title,
            printer_port=printer_port,
        )
    )
    return path


def write_image(path: Path) -> Path:
    """A 64x64 8-bit MONOCHROME2 Secondary Capture image to print."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Print", "P1", "OT"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = image_pixels()
    ds.save_as(path, enforce_file_format=True)
    return path


def image_pixels() -> bytes:
    """The test image's pixels: a horizontal ramp."""
    return bytes((x * 4) & 0xFF for _ in range(64) for x in range(64))
