"""Dependencies of the results API's routes: settings and the job named in the path."""

from typing import Annotated

from fastapi import Depends

from services.results_api.config import ResultsSettings, get_settings
from shared.errors import ErrorCode, TesseraError
from shared.http_api import JobStoreDep
from shared.job_store import JobNotFound
from shared.schemas import JobRecord

SettingsDep = Annotated[ResultsSettings, Depends(get_settings)]


def valid_job(job_id: str, jobs: JobStoreDep) -> JobRecord:
    """The job in the path, or 404 job_not_found."""
    try:
        return jobs.get(job_id)
    except JobNotFound:
        raise TesseraError(ErrorCode.job_not_found, f"No job has the id {job_id!r}.") from None


JobDep = Annotated[JobRecord, Depends(valid_job)]
