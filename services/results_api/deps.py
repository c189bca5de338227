"""Dependencies of the results API's routes."""

from typing import Annotated

from fastapi import Depends

from services.results_api.config import ResultsSettings, get_settings

SettingsDep = Annotated[ResultsSettings, Depends(get_settings)]
