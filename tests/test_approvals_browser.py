"""The approvals page in a real headless browser: sign in, find the request, approve it.

Debian's chromium and chromedriver (`make browser` installs them); the page runs on a real
port over LocalApprovals, and the statement waiting on the request hears the decision.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from approvals_fixtures import ApprovalsPage, approvals_page
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Debian's chromium and chromium-driver are not installed (make browser installs them)",
)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[ApprovalsPage]:
    with approvals_page(tmp_path) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1200,1000",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def sign_in(browser: webdriver.Chrome, page: ApprovalsPage, token: str) -> None:
    browser.get(f"{page.url}/signin")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "signin").click()
    WebDriverWait(browser, 10).until(
        expected_conditions.presence_of_element_located((By.ID, "approver"))
    )


def test_an_approver_signs_in_finds_the_request_and_approves_it(page, browser, tmp_path):
    request = page.submit(statement="UPDATE crm.customers SET city = 'Berlin' WHERE id = 42")
    waiting = page.waiter(request.id)

    sign_in(browser, page, page.token("dpo-1"))
    assert browser.current_url == f"{page.url}/"
    assert browser.find_element(By.ID, "approver").text == "dpo-1"
    browser.find_element(By.LINK_TEXT, request.id).click()
    WebDriverWait(browser, 10).until(
        expected_conditions.presence_of_element_located((By.ID, "statement"))
    )
    assert browser.find_element(By.ID, "statement").text == request.statement
    assert browser.find_element(By.ID, "status").text == "pending"
    browser.find_element(By.ID, "reason").send_keys("ticket CRM-12")
    browser.find_element(By.ID, "approve").click()
    WebDriverWait(browser, 10).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "status"), "approved")
    )

    decided = waiting.result(timeout=5)
    assert decided.status.value == "approved"
    assert decided.votes[0].approver == "dpo-1"
    assert decided.votes[0].reason == "ticket CRM-12"
    assert page.approvals.get(request.id).status.value == "approved"
    assert browser.find_element(By.ID, "outcome").text.startswith("approved by dpo-1 at ")
    assert "you approved this request" in browser.find_element(By.ID, "notice").text
    assert not browser.find_elements(By.ID, "approve")
    browser.save_screenshot(str(tmp_path / "approved.png"))


def test_an_approver_denies_with_a_reason(page, browser):
    request = page.submit()
    waiting = page.waiter(request.id)

    sign_in(browser, page, page.token("dpo-2"))
    browser.get(f"{page.url}/requests/{request.id}")
    browser.find_element(By.ID, "reason").send_keys("no ticket for this")
    browser.find_element(By.ID, "deny").click()
    WebDriverWait(browser, 10).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "status"), "denied")
    )

    assert waiting.result(timeout=5).status.value == "denied"
    assert "(no ticket for this)" in browser.find_element(By.ID, "outcome").text


def test_someone_outside_the_group_sees_neither_the_request_nor_a_button(page, browser):
    request = page.submit(group="dpo")

    sign_in(browser, page, page.token("eve", ("analysts",)))
    assert request.id not in browser.page_source  # not in their inbox
    browser.get(f"{page.url}/requests/{request.id}")

    # Not theirs to decide: they are not shown it at all.
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.ID, "statement")
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.ID, "approve")
    assert "that you decide or asked for" in browser.page_source
    assert page.approvals.get(request.id).pending


def test_signing_out_in_the_browser_ends_the_session(page, browser):
    sign_in(browser, page, page.token("dpo-1"))

    browser.find_element(By.ID, "signout").click()
    WebDriverWait(browser, 10).until(
        expected_conditions.presence_of_element_located((By.ID, "token"))
    )
    browser.get(f"{page.url}/")

    assert browser.current_url == f"{page.url}/signin?next=/"
