"""Dependencies of the results API's routes: settings and the job named in the path."""

from typing import Annotated

from fastapi import Depends

from services.results_api.config import ResultsSettings, get_settings
from shared.errors import ErrorCode, TesseraError
from shared.http_api import JobStoreDep, ReaderDep
from shared.job_store import JobNotFound
from shared.schemas import JobRecord

SettingsDep = Annotated[ResultsSettings, Depends(get_settings)]


def valid_job(job_id: str, jobs: JobStoreDep, principal: ReaderDep) -> JobRecord:
    """The caller's job in the path; 404 job_not_found for unknown ids and other tenants' jobs."""
    try:
        record = jobs.get(job_id)
    except JobNotFound:
        record = None
    if record is None or record.tenant_id != principal.tenant_id:
        raise TesseraError(ErrorCode.job_not_found, f"No job has the id {job_id!r}.")
    return record


JobDep = Annotated[JobRecord, Depends(valid_job)]
